"""The Open-Unmix networks in NNabla, on the parameter layout of the published weights
(`layout.py`): UMX (one network per target) and X-UMX (CrossNet-Open-Unmix: four UMX branches
bridged by two averages). Both are built from one `Branch`: UMX is a branch alone, X-UMX four
of them whose LSTMs read the average of their encodings and whose output stages read the
average of their skip connections (`CrossNet.__call__`, a few lines).

The LSTM runs the parameters of `PF.lstm`'s layout either as NNabla's fused `F.lstm`
(`ops.fused_lstm()`: GPU contexts) or as `unrolled_lstm`, the same LSTM written with batched
functions (one matrix product for the input projections of all frames, the recurrence of
both directions in one function), which also applies dropout between layers while training.
"""
import nnabla as nn
import nnabla.functions as F
import nnabla.initializer as I
import numpy as np
from nnabla.parameter import get_parameter_or_create

from unmix_nnabla.base.vocabulary import XUMX_BRANCHES
from unmix_nnabla.networks.layout import branch_name, parameter_shapes
from unmix_nnabla.networks.ops import batch_norm, dense, fused_lstm, lstm_recurrence, multiply

LSTM_DROPOUT = 0.4


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
        proj = dense(layer_in, F.transpose(w_in, (1, 0)), b, base_axis=2)
        proj = F.reshape(proj, (nb_frames, nb_samples, dirs, 4 * hid))
        # the backward direction reads the frames in reverse: (T, B, D, H) -> (T, B, D*H)
        out = lstm_recurrence(proj, w_rec, reverse=(False, True)[:dirs])
        layer_in = F.reshape(out, (nb_frames, nb_samples, dirs * hid))
        if dropout_masks and layer < nb_layers - 1:
            layer_in = multiply(layer_in, dropout_masks[layer])
    return layer_in


def fc_bn(scope, x, nb_out, test, input_affine=None, output_affine=None):
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
    x = dense(x, w, bias, base_axis=2)
    if output_affine is not None:
        scale, shift = (F.reshape(v, shape) for v in output_affine)
        # (gamma xhat + beta) s + t = (gamma s) xhat + (beta s + t)
        gamma, beta = gamma * scale, beta * scale + shift
    return batch_norm(x, beta, gamma, mean, var, batch_stat=not test)


class Branch:
    """One UMX network's parameters and its three stages; create and call it inside the
    parameter scope of its model (`target` None: UMX's names; a target: X-UMX's suffixed
    names).

    encode: mixture magnitude [shape=(nb_frames, nb_samples, nb_channels, nb_output_bins)]
            → crop to max_bin, standardize, fc1 + BN + tanh [shape=(nb_frames, nb_samples, hidden)]
    recur:  (nb_frames, nb_samples, hidden) → the LSTM stack's output, same shape
    decode: (nb_frames, nb_samples, 2 * hidden), mixture magnitude → fc2 + BN + ReLU, fc3 + BN,
            output scaling, ReLU: a mask, times the mixture magnitude
            [shape=(nb_frames, nb_samples, nb_channels, nb_output_bins)]
    """

    def __init__(self, cfg, target=None, input_mean=None, input_scale=None,
                 dropout=LSTM_DROPOUT):
        self.cfg, self.target, self.dropout = cfg, target, dropout
        self.dropout_masks = []
        if input_mean is None:
            input_mean = np.zeros(cfg.max_bin, np.float32)
        if input_scale is None:
            input_scale = np.ones(cfg.max_bin, np.float32)
        shapes = parameter_shapes(cfg, target)
        name = self.name

        def param(base, init):
            return get_parameter_or_create(name(base), shapes[name(base)], initializer=init)

        # stored negated and inverted, as the official weights do
        self.input_mean = param("input_mean", -np.asarray(input_mean[:cfg.max_bin], np.float32))
        self.input_scale = param("input_scale",
                                 1.0 / np.asarray(input_scale[:cfg.max_bin], np.float32))
        self.output_scale = param("output_scale", np.ones(cfg.nb_output_bins, np.float32))
        self.output_mean = param("output_mean", np.ones(cfg.nb_output_bins, np.float32))
        bound = 1.0 / np.sqrt(cfg.lstm_hidden_size)
        rng = np.random.RandomState(nn.random.prng.randint(2 ** 31))
        lstm_init = I.UniformInitializer((-bound, bound), rng=rng)
        self.lstm_w0 = param("lstm/lstm/weight_l0", lstm_init)
        self.lstm_w = param("lstm/lstm/weight", lstm_init) if cfg.nb_layers > 1 else None
        self.lstm_b = param("lstm/lstm/bias", lstm_init)

    def name(self, base):
        return branch_name(base, self.target)

    def encode(self, x, test):
        cfg = self.cfg
        nb_channels = x.shape[2]
        x = x[..., :cfg.max_bin]
        # standardization (x + input_mean) * input_scale, folded into fc1
        in_scale = F.tile(self.input_scale, nb_channels)
        in_shift = F.tile(self.input_mean, nb_channels) * in_scale
        return F.tanh(fc_bn(self.name("fc1"), x, cfg.hidden_size, test,
                            input_affine=(in_scale, in_shift)))

    def recur(self, x, training):
        """training: apply dropout between the layers: cuDNN's own (fused LSTM, GPU contexts),
        or mask Variables, all ones until `sample_dropout` draws them (unrolled LSTM)."""
        cfg = self.cfg
        if fused_lstm():
            nb_frames, nb_samples, _ = x.shape
            state = (cfg.nb_layers, cfg.nb_directions, nb_samples, cfg.lstm_hidden_size)
            y, _, _ = F.lstm(x, F.constant(0.0, state), F.constant(0.0, state), self.lstm_w0,
                             self.lstm_w, self.lstm_b, num_layers=cfg.nb_layers,
                             dropout=self.dropout if training else 0.0,
                             bidirectional=cfg.nb_directions == 2, training=training)
            return y
        masks = None
        if training:
            masks = [nn.Variable(x.shape) for _ in range(cfg.nb_layers - 1)]
            for mask in masks:
                mask.data.fill(1.0)
            self.dropout_masks = masks
        return unrolled_lstm(x, self.lstm_w0, self.lstm_w, self.lstm_b, cfg.nb_layers,
                             cfg.nb_directions, dropout_masks=masks)

    def decode(self, x, mix, test):
        cfg = self.cfg
        nb_frames, nb_samples, nb_channels, nb_bins = mix.shape
        x = F.relu(fc_bn(self.name("fc2"), x, cfg.hidden_size, test))
        # output scaling x * output_scale + output_mean, folded into fc3's batch norm
        x = fc_bn(self.name("fc3"), x, nb_channels * nb_bins, test,
                  output_affine=(F.tile(self.output_scale, nb_channels),
                                 F.tile(self.output_mean, nb_channels)))
        # (T, B, C * bins) -> (T, B, C, bins)
        x = F.reshape(x, (nb_frames, nb_samples, nb_channels, nb_bins))
        return multiply(F.relu(x), mix)  # exact zeros: not F.mul_n (see ops.py)

    def sample_dropout(self, rngs):
        """Draw new inverted-dropout masks (keep with probability 1 - p, scaled by 1 / (1 - p)).

        rngs: one RandomState per sample of the batch, so that a sample's masks do not depend
        on which batch or process it is in.
        """
        p = self.dropout
        for mask in self.dropout_masks:
            nb_frames, nb_samples, width = mask.shape
            mask.d = np.stack([rng.uniform(size=(nb_frames, width)) >= p for rng in rngs],
                              axis=1) / (1.0 - p)


def _downmixed(mix, cfg):
    """A mono model's input: the mixture magnitude downmixed to one channel."""
    if cfg.nb_channels == 1 and mix.shape[2] > 1:
        return F.mean(mix, axis=2, keepdims=True)
    return mix


class OpenUnmix:
    """UMX for one target; create and call it inside `nn.parameter_scope(target)`.

    Input: magnitude spectrogram [shape=(nb_frames, nb_samples, nb_channels, nb_output_bins)]
    Output: magnitude estimate [shape=(nb_frames, nb_samples, nb_channels, nb_output_bins)]
    (nb_channels == 1 models downmix their input and give a mono estimate.)

    A training graph (test=False) applies dropout between the LSTM layers through mask
    Variables that `sample_dropout(rngs)` redraws: the masks come from the caller's random
    states, so a resumed run draws the same ones.
    """

    def __init__(self, cfg, input_mean=None, input_scale=None, dropout=LSTM_DROPOUT):
        self.cfg = cfg
        self.branch = Branch(cfg, None, input_mean, input_scale, dropout)

    @property
    def dropout_masks(self):
        return self.branch.dropout_masks

    def __call__(self, x, test=True):
        mix = _downmixed(x, self.cfg)
        h = self.branch.encode(mix, test)  # (T, B, hidden)
        lstm = self.branch.recur(h, training=not test)
        # skip connection: (T, B, 2 * hidden)
        return self.branch.decode(F.concatenate(h, lstm, axis=2), mix, test)

    def sample_dropout(self, rngs):
        self.branch.sample_dropout(rngs)


class CrossNet:
    """X-UMX: four UMX branches bridged by two averages; create and call it inside one
    parameter scope (Sony's `x-umx.h5` names, suffixed by target).

    Input: as `OpenUnmix`'s. Output: {target: magnitude estimate [shape=(nb_frames,
    nb_samples, nb_channels, nb_output_bins)]} for the branches, in `targets` order.
    """

    def __init__(self, cfg, targets=XUMX_BRANCHES, input_mean=None, input_scale=None,
                 dropout=LSTM_DROPOUT):
        self.cfg, self.targets = cfg, tuple(targets)
        self.branches = {t: Branch(cfg, t, input_mean, input_scale, dropout)
                         for t in self.targets}

    @property
    def dropout_masks(self):
        return [m for b in self.branches.values() for m in b.dropout_masks]

    def __call__(self, x, test=True):
        mix = _downmixed(x, self.cfg)
        branches = self.branches.values()
        h = [b.encode(mix, test) for b in branches]
        cross_1 = _average(h)  # what every branch's LSTM reads
        skips = [F.concatenate(h_t, b.recur(cross_1, training=not test), axis=2)
                 for h_t, b in zip(h, branches)]
        cross_2 = _average(skips)  # what every branch's output stage reads
        return {t: b.decode(cross_2, mix, test) for t, b in self.branches.items()}

    def sample_dropout(self, rngs):
        for branch in self.branches.values():
            branch.sample_dropout(rngs)


def _average(variables):
    return F.mul_scalar(F.add_n(*variables), 1.0 / len(variables))
