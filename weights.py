"""Weight files: UMX's `<target>.h5` (the official NNabla layout, one target per file, names
relative to `nn.parameter_scope(target)`), read, checked against the layout, loaded and saved.
"""
import json
import os
import tempfile
import zipfile

import numpy as np
import nnabla as nn

from data import SOURCES as TARGETS
from files import atomic_path, write_json_atomic
from model import OpenUnmix, config_from_shapes, parameter_shapes
from runtime import UmxError


def read_parameter_file(path):
    """The parameters of one NNabla .h5 file: {name: ndarray} (names as stored), all finite."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            params = {}
            f.visititems(lambda name, obj: params.__setitem__(name, obj[()])
                         if isinstance(obj, h5py.Dataset) else None)
    except (OSError, RuntimeError, ValueError, KeyError):
        raise UmxError("%s is not an NNabla weight file (.h5), or it is damaged" % path) from None
    if not params:
        raise UmxError("%s holds no parameters" % path)
    for name, value in params.items():
        if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
            raise UmxError("%s: parameter %s holds %s values" % (
                path, name, "non-float" if not np.issubdtype(value.dtype, np.floating)
                else "NaN or infinite"))
    return params


def check_parameters(params, expected, path):
    """Raise UmxError naming the first parameter whose name or shape differs from `expected`
    ({name: shape}); NNabla's own loader would silently skip or re-initialize it."""
    for name, shape in expected.items():
        if name not in params:
            raise UmxError("%s: missing parameter %s" % (path, name))
        if tuple(params[name].shape) != tuple(shape):
            raise UmxError("%s: parameter %s has shape %s, expected %s"
                           % (path, name, tuple(params[name].shape), tuple(shape)))
    extra = sorted(set(params) - set(expected))
    if extra:
        raise UmxError("%s: unexpected parameter %s" % (path, extra[0]))


def restore_parameters(path, scope):
    """Set the parameters that exist in nn.parameter_scope(scope) from `path`, which must hold
    exactly those names and shapes."""
    with nn.parameter_scope(scope):
        current = nn.get_parameters(grad_only=False)
    params = read_parameter_file(path)
    check_parameters(params, {k: v.shape for k, v in current.items()}, path)
    for name, var in current.items():
        var.d = params[name]


def load_target(path, target, n_hop=1024, sample_rate=44100):
    """Load `<target>.h5` into `nn.parameter_scope(target)`; return its UmxConfig.

    The architecture comes from the parameter shapes; n_hop and sample_rate (which the weights
    cannot tell) from a `<target>.json` beside the file when there is one.
    """
    params = read_parameter_file(path)
    meta_path = os.path.splitext(path)[0] + ".json"
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)["config"]
            n_hop, sample_rate = int(meta["n_hop"]), int(meta["sample_rate"])
        except (ValueError, KeyError, TypeError):
            raise UmxError("%s is not a model description written by train.py" % meta_path)
    try:
        cfg = config_from_shapes({k: v.shape for k, v in params.items()}, n_hop, sample_rate)
    except KeyError as exc:
        raise UmxError("%s: missing parameter %s" % (path, exc.args[0]))
    except ValueError as exc:
        raise UmxError("%s: %s" % (path, exc))
    check_parameters(params, parameter_shapes(cfg), path)
    with nn.parameter_scope(target):
        for name, value in params.items():
            var = nn.parameter.get_parameter_or_create(name, value.shape, need_grad=False)
            var.d = value
    return cfg


def h5_bytes(fill):
    """An HDF5 file built in memory by fill(h5py.File) → its bytes. Written to disk with a
    plain write, a full disk is one clean error (HDF5 writing a file of its own prints
    tracebacks from its destructors and can crash the process)."""
    import io
    import h5py
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    return buffer.getvalue()


def parameter_bytes(params):
    """{name: Variable} as NNabla's .h5 parameter file (`nn.save_parameters`' format)."""
    import io
    buffer = io.BytesIO()
    nn.save_parameters(buffer, params, extension=".h5")
    return buffer.getvalue()


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def save_parameters_atomic(path, params):
    """Write {name: Variable} as an NNabla .h5 file `path`, atomically."""
    data = parameter_bytes(params)
    with atomic_path(path) as tmp:
        write_bytes(tmp, data)


def save_target(path, target):
    """Write the parameters of nn.parameter_scope(target) as `path` (official layout), atomically."""
    with nn.parameter_scope(target):
        params = nn.get_parameters(grad_only=False)
    if not params:
        raise UmxError("no parameters in scope '%s' to save" % target)
    save_parameters_atomic(path, params)


def write_random_weights(folder, cfg, targets=TARGETS, seed=0):
    """Random `<target>.h5` files in the official layout (for tests and benchmarks).

    Values are scaled so that activations stay in a realistic range.
    """
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    for target in targets:
        with nn.parameter_scope("random"):
            OpenUnmix(cfg, input_mean=rng.rand(cfg.nb_output_bins) * 0.1,
                      input_scale=rng.rand(cfg.nb_output_bins) + 0.5)(
                nn.Variable((2, 1, cfg.nb_channels, cfg.nb_output_bins)))
            for name, var in nn.get_parameters(grad_only=False).items():
                if name.endswith("bn/var"):
                    var.d = rng.rand(*var.shape) + 0.5
                elif name.endswith("/W"):
                    var.d = rng.randn(*var.shape) / np.sqrt(var.shape[0])
                elif "/bn/" in name or name.startswith("output"):
                    var.d = rng.randn(*var.shape) * 0.1 + (1.0 if name.endswith("gamma") else 0)
                elif name.startswith("lstm"):
                    var.d = rng.uniform(-1, 1, var.shape) / np.sqrt(cfg.lstm_hidden_size)
        save_target(os.path.join(folder, target + ".h5"), "random")
        write_json_atomic(os.path.join(folder, target + ".json"), {"config": cfg.to_dict()})
        with nn.parameter_scope("random"):
            nn.clear_parameters()


def load_models(model_dir, targets):
    """Load `<target>.h5` for each target from a folder or an official `umx*.zip`.

    Returns {target: UmxConfig}; the parameters live in nn.parameter_scope(target).
    """
    if not os.path.exists(model_dir):
        raise UmxError("model not found: %s" % model_dir)
    if os.path.isfile(model_dir):
        if not zipfile.is_zipfile(model_dir):
            raise UmxError("--model %s is neither a folder nor a .zip of weight files" % model_dir)
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(model_dir) as z:
                z.extractall(tmp)
            # the official archives hold the files at the top or in one folder
            folders = [r for r, _, files in os.walk(tmp) if any(f.endswith(".h5") for f in files)]
            if not folders:
                raise UmxError("%s holds no .h5 weight files" % model_dir)
            return load_models(folders[0], targets)
    cfgs = {}
    for target in targets:
        path = os.path.join(model_dir, target + ".h5")
        if not os.path.isfile(path):
            available = sorted(f[:-3] for f in os.listdir(model_dir) if f.endswith(".h5"))
            raise UmxError("no weights for target '%s' in %s (found: %s)"
                           % (target, model_dir, ", ".join(available) or "none"))
        cfgs[target] = load_target(path, target)
    first = next(iter(cfgs.values()))
    for target, cfg in cfgs.items():
        if (cfg.n_fft, cfg.n_hop, cfg.sample_rate) != (first.n_fft, first.n_hop, first.sample_rate):
            raise UmxError("target '%s' uses another STFT or rate than '%s'" % (target, targets[0]))
    return cfgs
