"""UMX inference, run piecewise for speed: the same parameters and NNabla functions as the
training graph (`model.OpenUnmix(test=True)`), with the batch norms folded into the dense
layers and the LSTM recurrences of all targets stepping together."""
import nnabla as nn
import nnabla.functions as F
import numpy as np

from unmix_nnabla.base.context import ensure_context
from unmix_nnabla.base.memory import return_freed_memory
from unmix_nnabla.base.runtime import signals_deferred
from unmix_nnabla.base.threads import compute_threads
from unmix_nnabla.networks.model import CrossNet, OpenUnmix
from unmix_nnabla.networks.ops import dense, lstm_recurrence, multiply, numpy_kernels

BN_EPS = 1e-5


def fold_for_inference(params, cfg):
    """One target's parameters rewritten for inference: {name: float32 ndarray}.

    params: {name: ndarray or Variable} in the layout of `parameter_shapes(cfg)`. In inference the batch
    norms are fixed affine maps, so the input standardization, each batch norm and the output
    scaling fold into their dense layer's weights and a bias (computed in float64):

        fc1_W, fc1_b  (nb_channels * max_bin, hidden), (hidden,)
        fc2_W, fc2_b  (2 * hidden, hidden), (hidden,)
        fc3_W, fc3_b  (hidden, nb_channels * nb_output_bins), (...)
        lstm{l}_W_in (I, D * 4H), lstm{l}_b (D * 4H,), lstm{l}_W_rec (D, 4H, H)  per layer l
    (gates in NNabla's order i, f, g, o).
    """
    p = {k: np.asarray(getattr(v, "d", v), np.float64) for k, v in params.items()}
    dirs, hid = cfg.nb_directions, cfg.lstm_hidden_size

    def bn(layer):
        scale = p[layer + "/bn/gamma"].ravel() / np.sqrt(p[layer + "/bn/var"].ravel() + BN_EPS)
        return scale, p[layer + "/bn/beta"].ravel() - p[layer + "/bn/mean"].ravel() * scale

    folded = {}
    in_scale = np.tile(p["input_scale"], cfg.nb_channels)
    in_shift = np.tile(p["input_mean"], cfg.nb_channels) * in_scale
    scale, shift = bn("fc1")
    w = p["fc1/affine/W"]
    folded["fc1_W"] = in_scale[:, None] * w * scale
    folded["fc1_b"] = (in_shift @ w) * scale + shift
    scale, shift = bn("fc2")
    folded["fc2_W"], folded["fc2_b"] = p["fc2/affine/W"] * scale, shift
    scale, shift = bn("fc3")
    out_scale = np.tile(p["output_scale"], cfg.nb_channels)
    out_mean = np.tile(p["output_mean"], cfg.nb_channels)
    folded["fc3_W"] = p["fc3/affine/W"] * (scale * out_scale)
    folded["fc3_b"] = shift * out_scale + out_mean
    for layer in range(cfg.nb_layers):
        # (D, 4, H, I + H)
        w = p["lstm/lstm/weight_l0"] if layer == 0 else p["lstm/lstm/weight"][layer - 1]
        nb_in = w.shape[-1] - hid
        b = p["lstm/lstm/bias"][layer]  # (D, 4, H)
        # [x | h] weights -> input part (I, D * 4H) and recurrent part (D, 4H, H)
        folded["lstm%d_W_in" % layer] = w[..., :nb_in].reshape(dirs * 4 * hid, nb_in).T
        folded["lstm%d_b" % layer] = b.reshape(-1)
        folded["lstm%d_W_rec" % layer] = w[..., nb_in:].reshape(dirs, 4 * hid, hid)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in folded.items()}


def networks_to_run(cfgs, targets):
    """The networks that run for `targets`: theirs, and every branch of an X-UMX."""
    needed = []
    for target in targets:
        for name in cfgs[target].xumx_branches or (target,):
            if name not in needed:
                needed.append(name)
    return needed


class InferenceNetwork:
    """UMX inference for several targets at once, with NNabla functions, in pieces.

    Equal (to float rounding) to `OpenUnmix(cfg)(x, test=True)` with the same parameters, but
    organized for speed and bounded memory on any length:
    - every per-frame layer (fc1, the LSTMs' input projections, fc2, fc3) runs as one large
      matrix product over blocks of `block_rows` frames, with the batch norms folded into it
      (`fold_for_inference`); per-frame graphs have fixed shapes (a partial block is padded),
      so they are built once per block size, not per length;
    - the LSTM recurrences of all targets (of one architecture) and both directions step
      together, one batched product per step, in one function for all steps
      (`ops.lstm_recurrence`).
    On CPU contexts the products run on numpy's BLAS (`ops`): this network is for CPUs.

    models: {target: (UmxConfig, {name: ndarray})}.
    """

    def __init__(self, models, block_rows=1000):
        self.cfgs = {t: cfg for t, (cfg, _) in models.items()}
        self.weights = {}
        ctx = nn.get_current_context()
        for target, (cfg, params) in models.items():
            self.weights[target] = {}
            for name, value in fold_for_inference(params, cfg).items():
                var = self.weights[target][name] = nn.Variable.from_numpy_array(value)
                # move it to the array class the functions read (a cast drops the numpy-side
                # copy; reading it there would keep both)
                var.data.cast(np.float32, ctx)
        self.block_rows = block_rows
        self.graphs = {}

    @property
    def bridged(self):
        """Whether some targets are X-UMX branches (which run together, not one by one)."""
        return any(cfg.is_xumx for cfg in self.cfgs.values())

    def _per_frame(self, layer, weights, inputs, nb_out, write=None):
        """Apply a per-frame layer to row arrays, in blocks of equal size (at most block_rows).

        layer(variables, weights) builds the layer's graph on input Variables [shape=(size,
        ...)] and weight Variables; weights: the target's weight Variables, bound to the graph
        before it runs (graphs are shared by targets of one shape, so that their buffers exist
        once); inputs: arrays [shape=(rows, ...)] → float32 [shape=(rows, nb_out)], or, with
        write, None after write(first_row, block [shape=(n, nb_out)]) for each block.
        """
        rows = inputs[0].shape[0]
        size = -(-rows // -(-rows // self.block_rows))
        key = (layer.__name__, size) + tuple(a.shape[1:] for a in inputs) + \
            tuple(w.shape for w in weights)
        if key not in self.graphs:
            # one graph per layer kind: a new block size or shape replaces the old one
            for old in [k for k in self.graphs if k[0] == key[0]]:
                del self.graphs[old]
            variables = [nn.Variable((size,) + a.shape[1:]) for a in inputs]
            params = [nn.Variable(w.shape) for w in weights]
            self.graphs[key] = (variables, params, layer(variables, params))
        variables, params, output = self.graphs[key]
        for param, weight in zip(params, weights):
            param.data = weight.data  # no copy
        out = np.empty((rows, nb_out), np.float32) if write is None else None
        for start in range(0, rows, size):
            stop = min(start + size, rows)
            for var, array in zip(variables, inputs):
                if stop - start < size:  # the last block, padded with zeros
                    var.data.zero()
                var.d[:stop - start] = array[start:stop]
            with signals_deferred():
                output.forward(clear_buffer=True)
            if write is None:
                out[start:stop] = output.d[:stop - start]
            else:
                write(start, output.d[:stop - start])
        return out

    @staticmethod
    def _fc1_layer(variables, params):
        """mixture (size, C, max_bin) -> tanh(bn(fc1(standardized x))) (size, hidden)"""
        (x,), (w, b) = variables, params
        return dense(x, w, b, activation="tanh")

    @staticmethod
    def _projection_layer(variables, params):
        """(size, I) -> an LSTM layer's input projections (size, D * 4H)"""
        (x,), (w, b) = variables, params
        return dense(x, w, b)

    @staticmethod
    def _output_layer(variables, params):
        """fc1 output, LSTM output (size, hidden), mixture (size, C, bins) -> the estimate
        relu(bn(fc3(relu(bn(fc2([skip | lstm])))))) * mix [shape=(size, C * bins)]"""
        (skip, lstm, mix), (w2, b2, w3, b3) = variables, params
        x = dense(F.concatenate(skip, lstm, axis=1), w2, b2, activation="relu")
        x = dense(x, w3, b3, activation="relu")
        return multiply(x, F.reshape(mix, x.shape))

    @staticmethod
    def _recurrence(gates, w_rec, reverse):
        """LSTM recurrences from zero states: gates, w_rec: Variables [shape=(T, B, G, 4H)]
        (input projections; group g runs backward in time when reverse[g]) and [shape=(G, 4H,
        H)], filled through their `.d` (no copy) → hs [shape=(T, B, G, H)]: one NNabla function
        (`ops.lstm_recurrence`) for all steps."""
        hs = lstm_recurrence(gates, w_rec, reverse, keep=False)
        with signals_deferred():
            hs.forward(clear_buffer=True)
        return hs.d

    def _lstm_layer(self, members, layer, layer_out, nb_samples, nb_frames, hid, dirs):
        """LSTM layer `layer` of the targets `members`, from their inputs layer_out {target:
        [shape=(B * T, I)]} → {target: outputs [shape=(B * T, D * H)]}: the projections
        written straight into the recurrence's input Variables, all directions in one call."""
        # (B * T, D * 4H) per target -> (T, B, targets * D, 4H)
        gates_var = nn.Variable((nb_frames, nb_samples, len(members) * dirs, 4 * hid))
        w_rec_var = nn.Variable((len(members) * dirs, 4 * hid, hid))
        gates, w_rec = gates_var.d, w_rec_var.d
        for k, target in enumerate(members):
            w = self.weights[target]
            proj = self._per_frame(self._projection_layer,
                                   [w["lstm%d_W_in" % layer], w["lstm%d_b" % layer]],
                                   [layer_out[target]], dirs * 4 * hid)
            gates[:, :, k * dirs:(k + 1) * dirs] = \
                proj.reshape(nb_samples, nb_frames, dirs, 4 * hid).transpose(1, 0, 2, 3)
            w_rec[k * dirs:(k + 1) * dirs] = w["lstm%d_W_rec" % layer].d
        del gates, w_rec, proj
        reverse = [d == 1 for _ in members for d in range(dirs)]
        hs = self._recurrence(gates_var, w_rec_var, reverse)  # (T, B, targets * D, H)
        del gates_var, w_rec_var
        # (T, B, D, H) -> (B * T, D * H) per target
        return {target: np.ascontiguousarray(hs[:, :, k * dirs:(k + 1) * dirs].transpose(
            1, 0, 2, 3)).reshape(nb_samples * nb_frames, dirs * hid)
            for k, target in enumerate(members)}

    def run(self, spec, targets=None, write=None):
        """Estimates for a batch of sequences.

        spec: mixture magnitude [shape=(nb_samples, nb_frames, 2, nb_bins)] (sample-major, so
        that each sequence's frames are contiguous rows)
        → {target: float32 [shape=(nb_samples, nb_frames, nb_channels, nb_bins)]}, or, with
        write, None after write(target, first_row, block [shape=(n, nb_channels, nb_bins)])
        for consecutive blocks of rows (row = sample * nb_frames + frame): the estimates then
        never exist whole.
        """
        targets = list(targets or self.cfgs)
        nb_samples, nb_frames, _, nb_bins = spec.shape
        rows = nb_samples * nb_frames
        mixes = {2: np.ascontiguousarray(spec, np.float32).reshape(rows, 2, nb_bins)}
        results = {}
        # targets whose LSTMs have one shape step together; an X-UMX's branches run together
        # (all of them, whichever are asked for: the averages need every one)
        groups = {}
        for target in networks_to_run(self.cfgs, targets):
            cfg = self.cfgs[target]
            key = (cfg.lstm_hidden_size, cfg.nb_directions, cfg.nb_layers, cfg.xumx_branches)
            groups.setdefault(key, []).append(target)
            if cfg.nb_channels == 1 and 1 not in mixes:  # mono models read the downmix
                mixes[1] = mixes[2].mean(axis=1, keepdims=True)
        for (hid, dirs, nb_layers, bridged), members in groups.items():
            skip, layer_out = {}, {}
            for target in members:
                cfg, w = self.cfgs[target], self.weights[target]
                skip[target] = layer_out[target] = self._per_frame(
                    self._fc1_layer, [w["fc1_W"], w["fc1_b"]],
                    [mixes[cfg.nb_channels][:, :, :cfg.max_bin]], cfg.hidden_size)
            if bridged:  # X-UMX: every LSTM reads the average of the branches' encodings
                skip = dict.fromkeys(members, _average(skip.values()))
                layer_out = dict(skip)
            # every target's directions are groups of one recurrence: (T, B, targets * D, ...)
            # the targets' directions are groups of one recurrence, as many targets a call as
            # the threads can run side by side: the gates of all of them at once would be
            # the largest array of a worker (X-UMX: 144 MB for a batch of 4 windows)
            per_call = max(1, -(-compute_threads() // dirs))
            for layer in range(nb_layers):
                outputs = {}
                for first in range(0, len(members), per_call):
                    chunk = members[first:first + per_call]
                    outputs.update(self._lstm_layer(chunk, layer, layer_out, nb_samples,
                                                    nb_frames, hid, dirs))
                layer_out = outputs
            if bridged:  # X-UMX: the average of the skip connections [encoding | LSTM], whose
                # encoding half is already the average
                layer_out = dict.fromkeys(members, _average(layer_out.values()))
            for target in [t for t in members if t in targets]:
                cfg, w = self.cfgs[target], self.weights[target]
                shape = (cfg.nb_channels, nb_bins)
                est = self._per_frame(
                    self._output_layer, [w["fc2_W"], w["fc2_b"], w["fc3_W"], w["fc3_b"]],
                    [skip.pop(target), layer_out.pop(target), mixes[cfg.nb_channels]],
                    cfg.nb_channels * nb_bins,
                    write and (lambda row, block, t=target: write(t, row, block.reshape((-1,) + shape))))
                if write is None:
                    results[target] = est.reshape((nb_samples, nb_frames) + shape)
        return None if write else results


def _average(arrays):
    arrays = list(arrays)
    return sum(arrays[1:], arrays[0].copy()) / np.float32(len(arrays))


class GraphNetwork:
    """Separation on GPU contexts: the training graph's network in test mode (`OpenUnmix` per
    target, or X-UMX's `CrossNet`; the LSTM is cuDNN's fused one), built once per window
    batch shape. A batch's input goes to the device once and its estimates come back once:
    GPU memory is bounded by the window batch, whatever the track's length. Same interface
    as `InferenceNetwork` (`run`, `cfgs`, `bridged`).

    models: {target: (UmxConfig, {UMX name: Variable})}: the parameters are used as they are
    (no copy), under the names the graphs ask for in a scope of this network's own.
    """
    bridged = False  # X-UMX's branches run in one graph: windows are never split by target

    def __init__(self, models):
        self.cfgs = {t: cfg for t, (cfg, _) in models.items()}
        self.scope = "_graph_network_%d" % id(self)
        with nn.parameter_scope(self.scope):
            for target, (cfg, params) in models.items():
                # UMX: one scope per target; X-UMX: Sony's suffixed names in one scope
                scope = "xumx" if cfg.is_xumx else target
                with nn.parameter_scope(scope):
                    for name, var in params.items():
                        nn.parameter.set_parameter(
                            cfg.stored_name(name, target), var)
        self.graphs = {}

    def _graph(self, nb_frames, nb_samples):
        """Input Variable [shape=(nb_frames, nb_samples, 2, nb_bins)] and {target: estimate
        Variable [shape=(nb_frames, nb_samples, C, nb_bins)]} for this batch shape."""
        key = (nb_frames, nb_samples)
        if key in self.graphs:
            return self.graphs[key]
        self.graphs.clear()  # one shape at a time: the last batch's is the only other one
        bins = next(iter(self.cfgs.values())).nb_output_bins
        x = nn.Variable((nb_frames, nb_samples, 2, bins))
        outputs = {}
        with nn.parameter_scope(self.scope):
            xumx = [t for t, cfg in self.cfgs.items() if cfg.is_xumx]
            if xumx:
                cfg = self.cfgs[xumx[0]]
                with nn.parameter_scope("xumx"):
                    outputs.update(CrossNet(cfg, cfg.xumx_branches)(x, test=True))
            for target, cfg in self.cfgs.items():
                if not cfg.is_xumx:
                    with nn.parameter_scope(target):
                        outputs[target] = OpenUnmix(cfg)(x, test=True)
        for estimate in outputs.values():
            estimate.persistent = True  # read after the forward pass, which frees the rest
        self.graphs[key] = (x, outputs)
        return self.graphs[key]

    def run(self, spec, targets=None, write=None):
        """As `InferenceNetwork.run`: spec [shape=(nb_samples, nb_frames, 2, nb_bins)]."""
        targets = list(targets or self.cfgs)
        nb_samples, nb_frames, _, nb_bins = spec.shape
        x, outputs = self._graph(nb_frames, nb_samples)
        x.d = spec.transpose(1, 0, 2, 3)  # (samples, frames, ...) -> (frames, samples, ...)
        with signals_deferred():
            F.sink(*[outputs[t] for t in targets]).forward(clear_buffer=True)
        results = {}
        for target in targets:
            # (frames, samples, C, bins) -> (samples, frames, C, bins): one copy to the host
            estimate = np.ascontiguousarray(outputs[target].d.transpose(1, 0, 2, 3))
            if write is None:
                results[target] = estimate
            else:
                write(target, 0, estimate.reshape((-1,) + estimate.shape[2:]))
        return None if write else results


def scope_parameters(scope):
    """{name: Variable} of nn.parameter_scope(scope), as `weights.load_models` leaves each
    target's."""
    with nn.parameter_scope(scope):
        return nn.get_parameters(grad_only=False)


def network_for(cfgs, targets=None, params=None, release=False):
    """The one builder of "the network of these parameters" that separates (or validates) on
    the current context: the folded `InferenceNetwork` where the numpy kernels run (CPU
    contexts), the training graph's (`GraphNetwork`, cuDNN's LSTM) elsewhere.

    cfgs: {target: UmxConfig}; targets: those to separate (an X-UMX's branches all run);
    params: {target: {UMX name: Variable}} (default: each target's parameter scope).
    release: the folded network holds its own copy of the weights, so the targets' parameter
    scopes are cleared and the freed memory returned to the system (CLIs that only separate:
    about 110 MB less for 4 targets, shared with every worker).
    """
    ensure_context()
    chosen = networks_to_run(cfgs, targets or list(cfgs))
    if params is None:
        params = {t: scope_parameters(t) for t in chosen}
    models = {t: (cfgs[t], params[t]) for t in chosen}
    if not numpy_kernels():
        return GraphNetwork(models)
    network = InferenceNetwork(models)
    if release:
        del models, params
        for target in chosen:
            with nn.parameter_scope(target):
                nn.clear_parameters()
        return_freed_memory()
    return network
