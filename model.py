"""The Open-Unmix (UMX) network in NNabla, with the parameter layout of the official weights.

One target's parameters, relative to its `nn.parameter_scope(target)`:

    input_mean (max_bin,)            stores -mean of the mixture magnitude per bin
    input_scale (max_bin,)           stores 1 / std
    fc1/affine/W (nb_channels * max_bin, hidden)       fc1/bn/{beta,gamma,mean,var} (1, 1, hidden)
    lstm/lstm/weight_l0 (D, 4, H, hidden + H)          first LSTM layer, gates (i, f, g, o), [x | h]
    lstm/lstm/weight (nb_layers - 1, D, 4, H, D*H + H) the other layers
    lstm/lstm/bias (nb_layers, D, 4, H)
    fc2/affine/W (2 * hidden, hidden)                  fc2/bn/* (1, 1, hidden)
    fc3/affine/W (hidden, nb_channels * nb_output_bins)  fc3/bn/* (1, 1, nb_channels * nb_output_bins)
    output_scale (nb_output_bins,)   output_mean (nb_output_bins,)

with D = 2 directions of H = hidden / 2 units (bidirectional), or D = 1 of H = hidden
(unidirectional). This is the layout `PF.lstm` creates, so `F.lstm` can run the same
parameters; the network here runs them through `unrolled_lstm`, which is the same LSTM written
with batched NNabla functions (one matrix product for the input projections of all frames,
one batched product per step for both directions) and which also applies dropout between
layers while training, on every context.
"""
from dataclasses import asdict, dataclass

import numpy as np
import nnabla as nn
import nnabla.functions as F
import nnabla.initializer as I
from nnabla.parameter import get_parameter_or_create

from utils import nnabla_spectrogram

LSTM_DROPOUT = 0.4


@dataclass
class UmxConfig:
    """Everything that fixes the shapes of a UMX model (and how its STFT is taken)."""
    nb_channels: int = 2
    hidden_size: int = 512
    max_bin: int = 1487
    nb_output_bins: int = 2049
    nb_layers: int = 3
    unidirectional: bool = False
    n_fft: int = 4096
    n_hop: int = 1024
    sample_rate: int = 44100

    @property
    def nb_directions(self):
        return 1 if self.unidirectional else 2

    @property
    def lstm_hidden_size(self):
        return self.hidden_size // self.nb_directions

    def to_dict(self):
        return asdict(self)


def bandwidth_to_max_bin(rate, n_fft, bandwidth):
    """Number of STFT bins up to `bandwidth` Hz (16 kHz at 44.1 kHz / 4096 → 1487)."""
    freqs = np.linspace(0, float(rate) / 2, n_fft // 2 + 1, endpoint=True)
    return int(np.max(np.where(freqs <= bandwidth)[0])) + 1


def parameter_shapes(cfg):
    """The name → shape table of one target's parameters (relative to the target scope)."""
    hid, dirs, h = cfg.hidden_size, cfg.nb_directions, cfg.lstm_hidden_size
    out = cfg.nb_channels * cfg.nb_output_bins
    shapes = {
        "input_mean": (cfg.max_bin,),
        "input_scale": (cfg.max_bin,),
        "fc1/affine/W": (cfg.nb_channels * cfg.max_bin, hid),
        "lstm/lstm/weight_l0": (dirs, 4, h, hid + h),
        "lstm/lstm/bias": (cfg.nb_layers, dirs, 4, h),
        "fc2/affine/W": (2 * hid, hid),
        "fc3/affine/W": (hid, out),
        "output_scale": (cfg.nb_output_bins,),
        "output_mean": (cfg.nb_output_bins,),
    }
    if cfg.nb_layers > 1:
        shapes["lstm/lstm/weight"] = (cfg.nb_layers - 1, dirs, 4, h, dirs * h + h)
    for layer, width in (("fc1", hid), ("fc2", hid), ("fc3", out)):
        for name in ("beta", "gamma", "mean", "var"):
            shapes["%s/bn/%s" % (layer, name)] = (1, 1, width)
    return shapes


def config_from_shapes(shapes, n_hop=1024, sample_rate=44100):
    """Infer the architecture from one target's parameter shapes (names relative to the target).

    Raises KeyError naming a missing parameter, ValueError for inconsistent shapes.
    """
    for key in ("input_mean", "fc1/affine/W", "lstm/lstm/weight_l0", "output_scale"):
        if key not in shapes:
            raise KeyError(key)
    max_bin = shapes["input_mean"][0]
    fc1 = shapes["fc1/affine/W"]
    if len(fc1) != 2 or fc1[0] % max_bin:
        raise ValueError("fc1/affine/W has shape %s, not (nb_channels * %d, hidden)" % (fc1, max_bin))
    lstm = shapes["lstm/lstm/weight_l0"]
    if len(lstm) != 4 or lstm[0] not in (1, 2):
        raise ValueError("lstm/lstm/weight_l0 has shape %s, not (directions, 4, H, hidden + H)" % (lstm,))
    nb_output_bins = shapes["output_scale"][0]
    nb_layers = 1 + (shapes["lstm/lstm/weight"][0] if "lstm/lstm/weight" in shapes else 0)
    return UmxConfig(nb_channels=fc1[0] // max_bin, hidden_size=fc1[1], max_bin=max_bin,
                     nb_output_bins=nb_output_bins, nb_layers=nb_layers,
                     unidirectional=lstm[0] == 1, n_fft=2 * (nb_output_bins - 1), n_hop=n_hop,
                     sample_rate=sample_rate)


def unrolled_lstm(x, weight_l0, weight, bias, nb_layers, nb_directions, dropout_masks=None):
    """A stacked (bi)LSTM equal to `F.lstm` with the same parameters and zero initial state.

    x [shape=(nb_frames, nb_samples, nb_features)]
    → [shape=(nb_frames, nb_samples, nb_directions * H)]  (forward, then backward features)
    dropout_masks: nb_layers - 1 Variables [shape=(nb_frames, nb_samples, nb_directions * H)]
    multiplied with the outputs of all layers but the last (training only).
    """
    nb_frames, nb_samples, _ = x.shape
    dirs = nb_directions
    hid = weight_l0.shape[2]
    layer_in = x
    for layer in range(nb_layers):
        w = weight_l0 if layer == 0 else weight[layer - 1]
        nb_in = w.shape[-1] - hid
        # (D, 4, H, I + H) -> input weights (D*4H, I) and recurrent weights (D, 4H, H)
        w = F.reshape(w, (dirs, 4 * hid, nb_in + hid))
        w_in = F.reshape(w[:, :, :nb_in], (dirs * 4 * hid, nb_in))
        w_rec = w[:, :, nb_in:]  # (D, 4H, H)
        b = F.reshape(bias[layer], (dirs * 4 * hid,))
        # input projections of all frames and both directions in one product:
        # (T * B, I) @ (I, D*4H) -> (T, B, D, 4H)
        proj = F.affine(layer_in, F.transpose(w_in, (1, 0)), b, base_axis=2)
        proj = F.reshape(proj, (nb_frames, nb_samples, dirs, 4 * hid))
        proj = F.transpose(proj, (0, 2, 1, 3))  # (T, D, B, 4H)
        if dirs == 2:
            # the backward direction reads the frames in reverse
            proj = F.concatenate(proj[:, :1], F.flip(proj[:, 1:], axes=[0]), axis=1)
        steps = F.split(proj, axis=0) if nb_frames > 1 else [F.reshape(proj, proj.shape[1:])]
        h = c = None
        outputs = []
        for gates in steps:  # gates: (D, B, 4H)
            if h is not None:
                gates = gates + F.batch_matmul(h, w_rec, transpose_b=True)
            i, f, g, o = F.split(F.reshape(gates, (dirs, nb_samples, 4, hid)), axis=2)
            i, g, o = F.sigmoid(i), F.tanh(g), F.sigmoid(o)
            # F.mul_n: on the CPU several times faster than Mul2 at these sizes
            c = F.mul_n(i, g) if c is None else F.mul_n(F.sigmoid(f), c) + F.mul_n(i, g)
            h = F.mul_n(o, F.tanh(c))
            outputs.append(h)
        out = F.stack(*outputs, axis=0)  # (T, D, B, H)
        if dirs == 2:
            out = F.concatenate(out[:, :1], F.flip(out[:, 1:], axes=[0]), axis=1)
        # (T, D, B, H) -> (T, B, D*H)
        layer_in = F.reshape(F.transpose(out, (0, 2, 1, 3)), (nb_frames, nb_samples, dirs * hid))
        if dropout_masks and layer < nb_layers - 1:
            layer_in = F.mul_n(layer_in, dropout_masks[layer])  # Mul2 is ~3x slower
    return layer_in


class OpenUnmix:
    """UMX for one target; create and call it inside `nn.parameter_scope(target)`.

    Input: magnitude spectrogram [shape=(nb_frames, nb_samples, nb_channels, nb_output_bins)]
           or time-domain audio [shape=(nb_samples, nb_channels, nb_timesteps)]
    Output: magnitude estimate [shape=(nb_frames, nb_samples, nb_channels, nb_output_bins)]
    (nb_channels == 1 models downmix their input and give a mono estimate.)

    A training graph (test=False) applies dropout between the LSTM layers through mask
    Variables (`self.dropout_masks`, initially all ones) that `sample_dropout(rngs)` redraws:
    the masks come from the caller's random states, so a resumed run draws the same ones.
    """

    def __init__(self, cfg, input_mean=None, input_scale=None):
        self.cfg = cfg
        self.dropout_masks = []
        if input_mean is None:
            input_mean = np.zeros(cfg.max_bin, np.float32)
        if input_scale is None:
            input_scale = np.ones(cfg.max_bin, np.float32)
        shapes = parameter_shapes(cfg)

        def param(name, init):
            return get_parameter_or_create(name, shapes[name], initializer=init)

        # stored negated and inverted, as the official weights do
        self.input_mean = param("input_mean", -np.asarray(input_mean[:cfg.max_bin], np.float32))
        self.input_scale = param("input_scale",
                                 1.0 / np.asarray(input_scale[:cfg.max_bin], np.float32))
        self.output_scale = param("output_scale", np.ones(cfg.nb_output_bins, np.float32))
        self.output_mean = param("output_mean", np.ones(cfg.nb_output_bins, np.float32))
        bound = 1.0 / np.sqrt(cfg.lstm_hidden_size)
        rng = np.random.RandomState(nn.random.prng.randint(2 ** 31))
        lstm_init = I.UniformInitializer((-bound, bound), rng=rng)
        with nn.parameter_scope("lstm"), nn.parameter_scope("lstm"):
            self.lstm_w0 = get_parameter_or_create(
                "weight_l0", shapes["lstm/lstm/weight_l0"], lstm_init)
            self.lstm_w = (get_parameter_or_create("weight", shapes["lstm/lstm/weight"], lstm_init)
                           if cfg.nb_layers > 1 else None)
            self.lstm_b = get_parameter_or_create("bias", shapes["lstm/lstm/bias"], lstm_init)

    def __call__(self, x, test=True, freeze_bn=False):
        """freeze_bn: while training, normalize with the running statistics instead of the
        batch's (then samples do not interact: used to check data-parallel equivalence)."""
        cfg = self.cfg
        bn_test = test or freeze_bn
        if x.ndim == 3:
            x = nnabla_spectrogram(x, cfg.n_fft, cfg.n_hop)
        if cfg.nb_channels == 1 and x.shape[2] > 1:
            x = F.mean(x, axis=2, keepdims=True)
        nb_frames, nb_samples, nb_channels, nb_bins = x.shape
        mix = x
        x = x[..., :cfg.max_bin]
        # standardization (x + input_mean) * input_scale, folded into fc1
        in_scale = F.tile(self.input_scale, nb_channels)
        in_shift = F.tile(self.input_mean, nb_channels) * in_scale
        x = F.tanh(self._fc_bn("fc1", x, cfg.hidden_size, bn_test,
                               input_affine=(in_scale, in_shift)))  # (T, B, hidden)
        masks = None
        if not test:
            masks = [nn.Variable((nb_frames, nb_samples, cfg.hidden_size))
                     for _ in range(cfg.nb_layers - 1)]
            for mask in masks:
                mask.data.fill(1.0)
            self.dropout_masks = masks
        lstm_out = unrolled_lstm(x, self.lstm_w0, self.lstm_w, self.lstm_b, cfg.nb_layers,
                                 cfg.nb_directions, dropout_masks=masks)
        x = F.concatenate(x, lstm_out, axis=2)  # skip connection: (T, B, 2 * hidden)
        x = F.relu(self._fc_bn("fc2", x, cfg.hidden_size, bn_test))
        # output scaling x * output_scale + output_mean, folded into fc3's batch norm
        x = self._fc_bn("fc3", x, nb_channels * nb_bins, bn_test,
                        output_affine=(F.tile(self.output_scale, nb_channels),
                                       F.tile(self.output_mean, nb_channels)))
        # (T, B, C * bins) -> (T, B, C, bins)
        x = F.reshape(x, (nb_frames, nb_samples, nb_channels, nb_bins))
        return F.mul_n(F.relu(x), mix)  # Mul2 is ~3x slower on the CPU

    def sample_dropout(self, rngs, p=LSTM_DROPOUT):
        """Draw new inverted-dropout masks (keep with probability 1 - p, scaled by 1 / (1 - p)).

        rngs: one RandomState per sample of the batch, so that a sample's masks do not depend
        on which batch or process it is in.
        """
        for mask in self.dropout_masks:
            nb_frames, nb_samples, width = mask.shape
            mask.d = np.stack([rng.uniform(size=(nb_frames, width)) >= p for rng in rngs],
                              axis=1) / (1.0 - p)

    @staticmethod
    def _fc_bn(scope, x, nb_out, test, input_affine=None, output_affine=None):
        """Bias-free dense layer + batch norm over the last axis: (T, B, ...) -> (T, B, nb_out).

        input_affine (scale, shift) [shape=(nb_in,)]: the layer reads x * scale + shift;
        output_affine (scale, shift) [shape=(nb_out,)]: applied after the batch norm.
        Both are folded into the small weight and normalization vectors (exact rewrites):
        NNabla's broadcasting products on the large activations are slow on the CPU.
        Parameters: <scope>/affine/W (nb_in, nb_out), <scope>/bn/{beta,gamma,mean,var}
        (1, 1, nb_out), as PF.affine and PF.batch_normalization name them.
        """
        nb_in = int(np.prod(x.shape[2:]))
        with nn.parameter_scope(scope):
            lim = I.calc_uniform_lim_glorot(nb_in, nb_out)
            w = get_parameter_or_create("affine/W", (nb_in, nb_out),
                                        I.UniformInitializer(lim, rng=nn.random.prng))
            with nn.parameter_scope("bn"):
                shape = (1, 1, nb_out)
                beta = get_parameter_or_create("beta", shape, I.ConstantInitializer(0))
                gamma = get_parameter_or_create("gamma", shape, I.ConstantInitializer(1))
                mean = get_parameter_or_create("mean", shape, I.ConstantInitializer(0),
                                               need_grad=False)
                var = get_parameter_or_create("var", shape, I.ConstantInitializer(1),
                                              need_grad=False)
        bias = None
        if input_affine is not None:
            scale, shift = input_affine
            # (x * s + t) W = x (s W) + t W
            bias = F.reshape(F.affine(F.reshape(shift, (1, nb_in)), w), (nb_out,))
            w = w * F.reshape(scale, (nb_in, 1))
        x = F.affine(x, w, bias, base_axis=2)
        if output_affine is not None:
            scale, shift = (F.reshape(v, shape) for v in output_affine)
            # (gamma xhat + beta) s + t = (gamma s) xhat + (beta s + t)
            gamma, beta = gamma * scale, beta * scale + shift
        return F.batch_normalization(x, beta, gamma, mean, var, axes=[2], decay_rate=0.9,
                                     eps=1e-5, batch_stat=not test)


# --------------------------------------------------------------------------------------
# inference: the same network, run piecewise for speed
# --------------------------------------------------------------------------------------

BN_EPS = 1e-5
# gate order of the inference LSTM: the three sigmoid gates, then the tanh gate
_GATES_FOR_INFERENCE = [0, 1, 3, 2]  # NNabla's (i, f, g, o) -> (i, f, o, g)


def fold_for_inference(params, cfg):
    """One target's parameters rewritten for inference: {name: float32 ndarray}.

    params: {name: ndarray} in the layout of `parameter_shapes(cfg)`. In inference the batch
    norms are fixed affine maps, so the input standardization, each batch norm and the output
    scaling fold into their dense layer's weights and a bias (computed in float64):

        fc1_W, fc1_b  (nb_channels * max_bin, hidden), (hidden,)
        fc2_W, fc2_b  (2 * hidden, hidden), (hidden,)
        fc3_W, fc3_b  (hidden, nb_channels * nb_output_bins), (...)
        lstm{l}_W_in (I, D * 4H), lstm{l}_b (D * 4H,), lstm{l}_W_rec (D, 4H, H)  per layer l
    with the LSTM gates reordered to (i, f, o, g) and g's rows doubled (see below).
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
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
        w = p["lstm/lstm/weight_l0"] if layer == 0 else p["lstm/lstm/weight"][layer - 1]
        w = w[:, _GATES_FOR_INFERENCE]  # (D, 4, H, I + H)
        nb_in = w.shape[-1] - hid
        b = p["lstm/lstm/bias"][layer][:, _GATES_FOR_INFERENCE]  # (D, 4, H)
        # tanh(g) = 2 sigmoid(2 g) - 1: the g gate's rows doubled (exact), all four gates take
        # one sigmoid (NNabla's CPU tanh costs 2.5 sigmoids)
        w[:, 3] *= 2
        b[:, 3] *= 2
        # [x | h] weights -> input part (I, D * 4H) and recurrent part (D, 4H, H)
        folded["lstm%d_W_in" % layer] = w[..., :nb_in].reshape(dirs * 4 * hid, nb_in).T
        folded["lstm%d_b" % layer] = b.reshape(-1)
        folded["lstm%d_W_rec" % layer] = w[..., nb_in:].reshape(dirs, 4 * hid, hid)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in folded.items()}


def _twice_minus_one(x):
    """2 x - 1: with x = sigmoid(2 y), tanh(y)"""
    return F.add_scalar(F.mul_scalar(x, 2.0), -1.0)


class InferenceNetwork:
    """UMX inference for several targets at once, with NNabla functions, in pieces.

    Equal (to float rounding) to `OpenUnmix(cfg)(x, test=True)` with the same parameters, but
    organized for speed and bounded memory on any length:
    - every per-frame layer (fc1, the LSTMs' input projections, fc2, fc3) runs as one large
      matrix product over blocks of `block_rows` frames, with the batch norms folded into it
      (`fold_for_inference`);
    - the LSTM recurrences of all targets (of one architecture) and both directions step
      together, as one batched product per step, in a graph of `chunk_steps` steps that
      carries its state from call to call.
    Graphs have fixed shapes (partial blocks and chunks are padded), so they are built once
    per block size and batch size, not per length.

    models: {target: (UmxConfig, {name: ndarray})}.
    """

    def __init__(self, models, chunk_steps=32, block_rows=1000):
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
        self.chunk_steps = chunk_steps
        self.block_rows = block_rows
        self.graphs = {}

    @classmethod
    def from_parameter_scopes(cls, cfgs, **kw):
        """Build from the parameters in nn.parameter_scope(target) for each target of cfgs."""
        models = {}
        for target, cfg in cfgs.items():
            with nn.parameter_scope(target):
                params = {k: v.d for k, v in nn.get_parameters(grad_only=False).items()}
            models[target] = (cfg, params)
        return cls(models, **kw)

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
        return F.tanh(F.affine(x, w, b))

    @staticmethod
    def _projection_layer(variables, params):
        """(size, I) -> an LSTM layer's input projections (size, D * 4H)"""
        (x,), (w, b) = variables, params
        return F.affine(x, w, b)

    @staticmethod
    def _output_layer(variables, params):
        """fc1 output, LSTM output (size, hidden), mixture (size, C, bins) -> the estimate
        relu(bn(fc3(relu(bn(fc2([skip | lstm])))))) * mix [shape=(size, C * bins)]"""
        (skip, lstm, mix), (w2, b2, w3, b3) = variables, params
        x = F.relu(F.affine(F.concatenate(skip, lstm, axis=1), w2, b2))
        x = F.relu(F.affine(x, w3, b3))
        return F.mul_n(x, F.reshape(mix, x.shape))

    def _recurrent_graph(self, nb_groups, nb_samples, hid):
        """`chunk_steps` LSTM steps of nb_groups independent recurrences (targets x directions).

        gates_in [shape=(K, G, B, 4H)] (input projections, gates (i, f, o, g)), h0, c0
        [shape=(G, B, H)], w_rec [shape=(G, 4H, H)] -> hs [shape=(K, G, B, H)], hK, cK.
        """
        key = ("rec", nb_groups, nb_samples, hid)
        if key in self.graphs:
            return self.graphs[key]
        steps = self.chunk_steps
        gates_in = nn.Variable((steps, nb_groups, nb_samples, 4 * hid))
        h0 = nn.Variable((nb_groups, nb_samples, hid))
        c0 = nn.Variable((nb_groups, nb_samples, hid))
        w_rec = nn.Variable((nb_groups, 4 * hid, hid))
        h, c = h0, c0
        outputs = []
        for x in (F.split(gates_in, axis=0) if steps > 1
                  else [F.reshape(gates_in, gates_in.shape[1:])]):
            gates = F.sigmoid(x + F.batch_matmul(h, w_rec, transpose_b=True))
            i, f, o, g = F.split(F.reshape(gates, (nb_groups, nb_samples, 4, hid)), axis=2)
            c = F.mul_n(f, c) + F.mul_n(i, _twice_minus_one(g))
            h = F.mul_n(o, _twice_minus_one(F.sigmoid(F.mul_scalar(c, 2.0))))
            outputs.append(h)
        hs = F.stack(*outputs, axis=0)
        for v in (hs, h, c):
            v.persistent = True  # read after the forward pass
        self.graphs[key] = (gates_in, h0, c0, w_rec, hs, h, c, F.sink(hs, h, c))
        return self.graphs[key]

    def _recurrence(self, gates, w_rec):
        """LSTM recurrences from zero states: gates [shape=(T, G, B, 4H)] (each group in its
        own time order), w_rec [shape=(G, 4H, H)] → hs [shape=(T, G, B, H)]."""
        nb_frames, nb_groups, nb_samples, _ = gates.shape
        hid = w_rec.shape[-1]
        steps = self.chunk_steps
        gates_in, h0, c0, w_var, hs, h_last, c_last, sink = \
            self._recurrent_graph(nb_groups, nb_samples, hid)
        w_var.d = w_rec
        h0.data.zero()
        c0.data.zero()
        out = np.empty((nb_frames, nb_groups, nb_samples, hid), np.float32)
        for start in range(0, nb_frames, steps):
            stop = min(start + steps, nb_frames)
            if stop - start == steps:
                gates_in.d = gates[start:stop]
            else:  # the last chunk: the steps past the end run on zeros and are dropped
                gates_in.data.zero()
                gates_in.d[:stop - start] = gates[start:stop]
            sink.forward(clear_buffer=True)
            out[start:stop] = hs.d[:stop - start]
            h0.d, c0.d = h_last.d, c_last.d
        return out

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
        # targets whose LSTMs have one shape step together
        groups = {}
        for target in targets:
            cfg = self.cfgs[target]
            key = (cfg.lstm_hidden_size, cfg.nb_directions, cfg.nb_layers)
            groups.setdefault(key, []).append(target)
            if cfg.nb_channels == 1 and 1 not in mixes:  # mono models read the downmix
                mixes[1] = mixes[2].mean(axis=1, keepdims=True)
        for (hid, dirs, nb_layers), members in groups.items():
            skip, layer_out = {}, {}
            for target in members:
                cfg, w = self.cfgs[target], self.weights[target]
                skip[target] = layer_out[target] = self._per_frame(
                    self._fc1_layer, [w["fc1_W"], w["fc1_b"]],
                    [mixes[cfg.nb_channels][:, :, :cfg.max_bin]], cfg.hidden_size)
            for layer in range(nb_layers):
                # (B * T, D * 4H) per target -> (T, targets * D, B, 4H), backward ones reversed
                gates = np.empty((nb_frames, len(members) * dirs, nb_samples, 4 * hid), np.float32)
                w_rec = np.empty((len(members) * dirs, 4 * hid, hid), np.float32)
                for k, target in enumerate(members):
                    w = self.weights[target]
                    proj = self._per_frame(self._projection_layer,
                                           [w["lstm%d_W_in" % layer], w["lstm%d_b" % layer]],
                                           [layer_out[target]], dirs * 4 * hid)
                    proj = proj.reshape(nb_samples, nb_frames, dirs, 4 * hid).transpose(1, 2, 0, 3)
                    gates[:, k * dirs] = proj[:, 0]
                    if dirs == 2:
                        gates[:, k * dirs + 1] = proj[::-1, 1]
                    w_rec[k * dirs:(k + 1) * dirs] = w["lstm%d_W_rec" % layer].d
                hs = self._recurrence(gates, w_rec)  # (T, targets * D, B, H)
                del gates
                for k, target in enumerate(members):
                    out = np.empty((nb_samples, nb_frames, dirs, hid), np.float32)
                    out[:, :, 0] = hs[:, k * dirs].transpose(1, 0, 2)
                    if dirs == 2:
                        out[:, :, 1] = hs[::-1, k * dirs + 1].transpose(1, 0, 2)
                    layer_out[target] = out.reshape(rows, dirs * hid)
            for target in members:
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
