"""The Open-Unmix networks in NNabla, with the parameter layouts of the published weights:
UMX (one network per target) and X-UMX (CrossNet-Open-Unmix: four UMX branches bridged by two
averages). Both are built from one `Branch`: UMX is a branch alone, X-UMX four of them whose
LSTMs read the average of their encodings and whose output stages read the average of their
skip connections (`CrossNet.__call__`, a few lines).

One branch's parameters, relative to its `nn.parameter_scope(target)` for UMX (the official
`<target>.h5`), or with the target as a suffix of the first name part for X-UMX (Sony's
`x-umx.h5`, no outer scope: `fc1_vocals/affine/W`, `lstm_vocals/lstm/bias`,
`input_mean_vocals`, ...):

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
import re
from dataclasses import asdict, dataclass

import numpy as np
import nnabla as nn
import nnabla.functions as F
import nnabla.initializer as I
from nnabla.parameter import get_parameter_or_create

from ops import batch_norm, dense, fused_lstm, lstm_recurrence, multiply
from spectral import nnabla_spectrogram

LSTM_DROPOUT = 0.4
# X-UMX's branches, in the order of Sony's code and weights
XUMX_TARGETS = ("bass", "drums", "vocals", "other")


@dataclass
class UmxConfig:
    """Everything that fixes the shapes of a UMX model or of one X-UMX branch (and how its
    STFT is taken). xumx_branches: the targets of the X-UMX this branch is bridged with (all
    its branches), or () for a UMX target."""
    nb_channels: int = 2
    hidden_size: int = 512
    max_bin: int = 1487
    nb_output_bins: int = 2049
    nb_layers: int = 3
    unidirectional: bool = False
    n_fft: int = 4096
    n_hop: int = 1024
    sample_rate: int = 44100
    xumx_branches: tuple = ()

    @property
    def nb_directions(self):
        return 1 if self.unidirectional else 2

    @property
    def lstm_hidden_size(self):
        return self.hidden_size // self.nb_directions

    def to_dict(self):
        out = asdict(self)
        out["xumx_branches"] = list(self.xumx_branches)
        return out


def bandwidth_to_max_bin(rate, n_fft, bandwidth):
    """Number of STFT bins up to `bandwidth` Hz (16 kHz at 44.1 kHz / 4096 → 1487)."""
    freqs = np.linspace(0, float(rate) / 2, n_fft // 2 + 1, endpoint=True)
    return int(np.max(np.where(freqs <= bandwidth)[0])) + 1


def branch_name(name, target=None):
    """A branch parameter's stored name: UMX's as it is, X-UMX's with the target as a suffix
    of its first part (fc1/affine/W → fc1_vocals/affine/W, input_mean → input_mean_vocals)."""
    if target is None:
        return name
    head, sep, rest = name.partition("/")
    return head + "_" + target + sep + rest


_XUMX_NAME = re.compile(r"^(input_mean|input_scale|output_scale|output_mean|fc1|fc2|fc3|lstm)_"
                        r"(.+?)(/.*)?$")


def split_branches(params):
    """X-UMX parameters {stored name: value} → {target: {UMX name: value}}; {} when the names
    are not X-UMX's. A name of neither layout is kept under the target None."""
    out = {}
    for name, value in params.items():
        match = _XUMX_NAME.match(name)
        if match:
            out.setdefault(match.group(2), {})[match.group(1) + (match.group(3) or "")] = value
        else:
            out.setdefault(None, {})[name] = value
    return out if set(out) - {None} else {}


def parameter_shapes(cfg, target=None):
    """The name → shape table of one branch's parameters (relative to the target scope for
    UMX; with `target`, X-UMX's suffixed names)."""
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
    return {branch_name(k, target): v for k, v in shapes.items()}


def xumx_parameter_shapes(cfg, targets=XUMX_TARGETS):
    """The name → shape table of an X-UMX file (Sony's layout: all branches, suffixed)."""
    shapes = {}
    for target in targets:
        shapes.update(parameter_shapes(cfg, target))
    return shapes


def config_from_shapes(shapes, n_hop=1024, sample_rate=44100):
    """Infer the architecture from one branch's parameter shapes (UMX names).

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
        proj = dense(layer_in, F.transpose(w_in, (1, 0)), b, base_axis=2)
        proj = F.reshape(proj, (nb_frames, nb_samples, dirs, 4 * hid))
        proj = F.transpose(proj, (0, 2, 1, 3))  # (T, D, B, 4H)
        if dirs == 2:
            # the backward direction reads the frames in reverse
            proj = F.concatenate(proj[:, :1], F.flip(proj[:, 1:], axes=[0]), axis=1)
        out = lstm_recurrence(proj, w_rec)  # (T, D, B, H)
        if dirs == 2:
            out = F.concatenate(out[:, :1], F.flip(out[:, 1:], axes=[0]), axis=1)
        # (T, D, B, H) -> (T, B, D*H)
        layer_in = F.reshape(F.transpose(out, (0, 2, 1, 3)), (nb_frames, nb_samples, dirs * hid))
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

    def __init__(self, cfg, target=None, input_mean=None, input_scale=None):
        self.cfg, self.target = cfg, target
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
                             dropout=LSTM_DROPOUT if training else 0.0,
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

    def sample_dropout(self, rngs, p=LSTM_DROPOUT):
        """Draw new inverted-dropout masks (keep with probability 1 - p, scaled by 1 / (1 - p)).

        rngs: one RandomState per sample of the batch, so that a sample's masks do not depend
        on which batch or process it is in.
        """
        for mask in self.dropout_masks:
            nb_frames, nb_samples, width = mask.shape
            mask.d = np.stack([rng.uniform(size=(nb_frames, width)) >= p for rng in rngs],
                              axis=1) / (1.0 - p)


def _magnitudes(x, cfg):
    """Time-domain input [shape=(nb_samples, nb_channels, nb_timesteps)] → its magnitude
    spectrogram; magnitudes [shape=(nb_frames, nb_samples, nb_channels, nb_bins)] as they are;
    a mono model's input downmixed to one channel."""
    if x.ndim == 3:
        x = nnabla_spectrogram(x, cfg.n_fft, cfg.n_hop)
    if cfg.nb_channels == 1 and x.shape[2] > 1:
        x = F.mean(x, axis=2, keepdims=True)
    return x


class OpenUnmix:
    """UMX for one target; create and call it inside `nn.parameter_scope(target)`.

    Input: magnitude spectrogram [shape=(nb_frames, nb_samples, nb_channels, nb_output_bins)]
           or time-domain audio [shape=(nb_samples, nb_channels, nb_timesteps)]
    Output: magnitude estimate [shape=(nb_frames, nb_samples, nb_channels, nb_output_bins)]
    (nb_channels == 1 models downmix their input and give a mono estimate.)

    A training graph (test=False) applies dropout between the LSTM layers through mask
    Variables that `sample_dropout(rngs)` redraws: the masks come from the caller's random
    states, so a resumed run draws the same ones.
    """

    def __init__(self, cfg, input_mean=None, input_scale=None):
        self.cfg = cfg
        self.branch = Branch(cfg, None, input_mean, input_scale)

    @property
    def dropout_masks(self):
        return self.branch.dropout_masks

    def __call__(self, x, test=True, freeze_bn=False):
        """freeze_bn: while training, normalize with the running statistics instead of the
        batch's (then samples do not interact: used to check data-parallel equivalence)."""
        mix = _magnitudes(x, self.cfg)
        h = self.branch.encode(mix, test or freeze_bn)  # (T, B, hidden)
        lstm = self.branch.recur(h, training=not test)
        # skip connection: (T, B, 2 * hidden)
        return self.branch.decode(F.concatenate(h, lstm, axis=2), mix, test or freeze_bn)

    def sample_dropout(self, rngs, p=LSTM_DROPOUT):
        self.branch.sample_dropout(rngs, p)


class CrossNet:
    """X-UMX: four UMX branches bridged by two averages; create and call it inside one
    parameter scope (Sony's `x-umx.h5` names, suffixed by target).

    Input: as `OpenUnmix`'s. Output: {target: magnitude estimate [shape=(nb_frames,
    nb_samples, nb_channels, nb_output_bins)]} for the branches, in `targets` order.
    """

    def __init__(self, cfg, targets=XUMX_TARGETS, input_mean=None, input_scale=None):
        self.cfg, self.targets = cfg, tuple(targets)
        self.branches = {t: Branch(cfg, t, input_mean, input_scale) for t in self.targets}

    @property
    def dropout_masks(self):
        return [m for b in self.branches.values() for m in b.dropout_masks]

    def __call__(self, x, test=True, freeze_bn=False):
        mix = _magnitudes(x, self.cfg)
        bn_test = test or freeze_bn
        branches = self.branches.values()
        h = [b.encode(mix, bn_test) for b in branches]
        cross_1 = _average(h)  # what every branch's LSTM reads
        skips = [F.concatenate(h_t, b.recur(cross_1, training=not test), axis=2)
                 for h_t, b in zip(h, branches)]
        cross_2 = _average(skips)  # what every branch's output stage reads
        return {t: b.decode(cross_2, mix, bn_test) for t, b in self.branches.items()}

    def sample_dropout(self, rngs, p=LSTM_DROPOUT):
        for branch in self.branches.values():
            branch.sample_dropout(rngs, p)


def _average(variables):
    return F.mul_scalar(F.add_n(*variables), 1.0 / len(variables))
