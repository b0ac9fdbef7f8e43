"""What fixes a model's shapes (`UmxConfig`), the parameter layout of the published weights,
and the one check of a configuration, wherever its values come from (weight shapes, a
`<name>.json`, asteroid's `model_args`, the command line).

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
(unidirectional): the layout `PF.lstm` creates, so that `F.lstm` runs the same parameters.
"""
import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.vocabulary import XUMX_BRANCHES

# sample rates the code supports (the resampler's and the CLI's range)
SAMPLE_RATES = (1000, 384000)


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
    def is_xumx(self):
        """Whether this is a branch of an X-UMX (bridged with its others), not a UMX target."""
        return bool(self.xumx_branches)

    @property
    def nb_targets(self):
        """How many targets one network of this config estimates: X-UMX's branches, or one."""
        return len(self.xumx_branches) or 1

    def stored_name(self, name, target):
        """A parameter's name as stored for `target`: X-UMX's with the branch suffix
        (`branch_name`), UMX's as it is."""
        return branch_name(name, target if self.is_xumx else None)

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


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_config(cfg, where):
    """`cfg` if the code can run it, else one UmxError naming `where` (the file or flag the
    values came from), the field and what it takes. The one check of a configuration."""
    def refuse(field, expected):
        raise UmxError("%s: %s is %r, expected %s" % (where, field, getattr(cfg, field), expected))
    for field in ("nb_channels", "hidden_size", "max_bin", "nb_output_bins", "nb_layers",
                  "n_fft", "n_hop", "sample_rate"):
        if not _is_integer(getattr(cfg, field)):
            refuse(field, "an integer")
    if not isinstance(cfg.unidirectional, (bool, np.bool_)):
        refuse("unidirectional", "true or false")
    if cfg.nb_channels not in (1, 2):
        refuse("nb_channels", "1 or 2")
    if cfg.n_fft < 16 or cfg.n_fft % 2:
        refuse("n_fft", "an even number >= 16")
    if cfg.nb_output_bins != cfg.n_fft // 2 + 1:
        refuse("nb_output_bins", "n_fft / 2 + 1 = %d" % (cfg.n_fft // 2 + 1))
    if not 0 < cfg.n_hop <= cfg.n_fft:
        refuse("n_hop", "between 1 and n_fft (%d)" % cfg.n_fft)
    if not 0 < cfg.max_bin <= cfg.nb_output_bins:
        refuse("max_bin", "between 1 and %d" % cfg.nb_output_bins)
    if cfg.hidden_size < 1 or (not cfg.unidirectional and cfg.hidden_size % 2):
        refuse("hidden_size", "a positive number (even for a bidirectional LSTM)")
    if cfg.nb_layers < 1:
        refuse("nb_layers", "at least 1")
    if not SAMPLE_RATES[0] <= cfg.sample_rate <= SAMPLE_RATES[1]:
        refuse("sample_rate", "%d to %d Hz" % SAMPLE_RATES)
    if not all(isinstance(t, str) and t for t in cfg.xumx_branches):
        refuse("xumx_branches", "target names")
    return cfg


def config_field(values, key, where, default=None, kind=int):
    """values[key] read from a file (a JSON, asteroid's model_args), or `default` when absent:
    an integer (a float that is one is taken, as PyTorch stores rates: 44100.0), or with
    kind=bool a boolean; anything else is one UmxError naming `where` and the key."""
    if key not in values:
        return default
    value = values[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UmxError("%s: %s is %r, expected true or false" % (where, key, value))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value) and value == int(value):
        return int(value)
    raise UmxError("%s: %s is %r, expected an integer" % (where, key, value))


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


def xumx_parameter_shapes(cfg, targets=XUMX_BRANCHES):
    """The name → shape table of an X-UMX file (Sony's layout: all branches, suffixed)."""
    shapes = {}
    for target in targets:
        shapes.update(parameter_shapes(cfg, target))
    return shapes


def config_from_shapes(shapes, n_hop=1024, sample_rate=44100, where="the weights"):
    """The architecture of one branch from its parameter shapes (UMX names); UmxError naming
    `where` and the parameter when the shapes do not fit the layout (callers check the whole
    with `check_config`, naming where the hop and rate came from)."""
    for key in ("input_mean", "fc1/affine/W", "lstm/lstm/weight_l0", "output_scale"):
        if key not in shapes:
            raise UmxError("%s: missing parameter %s" % (where, key))
    mean, fc1, lstm = shapes["input_mean"], shapes["fc1/affine/W"], shapes["lstm/lstm/weight_l0"]
    out = shapes["output_scale"]
    if len(mean) != 1 or len(out) != 1 or mean[0] < 1 or out[0] < 2:
        raise UmxError("%s: input_mean %s and output_scale %s are not (bins,) vectors"
                       % (where, tuple(mean), tuple(out)))
    max_bin = mean[0]
    if len(fc1) != 2 or fc1[0] % max_bin:
        raise UmxError("%s: fc1/affine/W has shape %s, not (nb_channels * %d, hidden)"
                       % (where, tuple(fc1), max_bin))
    if len(lstm) != 4 or lstm[0] not in (1, 2):
        raise UmxError("%s: lstm/lstm/weight_l0 has shape %s, not (directions, 4, H, hidden + H)"
                       % (where, tuple(lstm)))
    nb_layers = 1 + (shapes["lstm/lstm/weight"][0] if "lstm/lstm/weight" in shapes else 0)
    cfg = UmxConfig(nb_channels=int(fc1[0] // max_bin), hidden_size=int(fc1[1]),
                    max_bin=int(max_bin), nb_output_bins=int(out[0]), nb_layers=int(nb_layers),
                    unidirectional=lstm[0] == 1, n_fft=2 * (int(out[0]) - 1), n_hop=n_hop,
                    sample_rate=sample_rate)
    return cfg
