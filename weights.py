"""Weight files: UMX's `<target>.h5` (the official NNabla layout, one target per file, names
relative to `nn.parameter_scope(target)`), read, checked against the layout, loaded and saved.
"""
import json
import os
import tempfile
import zipfile
from dataclasses import replace

import numpy as np
import nnabla as nn

from datasets import SOURCES as TARGETS
from files import atomic_path, write_json_atomic
from model import (XUMX_TARGETS, OpenUnmix, config_from_shapes, parameter_shapes, split_branches,
                   xumx_parameter_shapes)
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


def model_description(path, n_hop=1024, sample_rate=44100):
    """(n_hop, sample_rate) from the `.json` that training and convert.py write beside a
    weight file (the weights cannot tell them), or the published models' values."""
    meta_path = os.path.splitext(path)[0] + ".json"
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)["config"]
            n_hop, sample_rate = int(meta["n_hop"]), int(meta["sample_rate"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UmxError("%s is not a model description written by train.py" % meta_path)
    return n_hop, sample_rate


def _config(shapes, path, n_hop, sample_rate):
    try:
        return config_from_shapes(shapes, n_hop, sample_rate)
    except KeyError as exc:
        raise UmxError("%s: missing parameter %s" % (path, exc.args[0]))
    except ValueError as exc:
        raise UmxError("%s: %s" % (path, exc))


def _into_scope(scope, params):
    with nn.parameter_scope(scope):
        for name, value in params.items():
            var = nn.parameter.get_parameter_or_create(name, value.shape, need_grad=False)
            var.d = value


def load_target(path, target):
    """Load a UMX `<target>.h5` into `nn.parameter_scope(target)`; return its UmxConfig.

    The architecture comes from the parameter shapes; n_hop and sample_rate from a
    `<target>.json` beside the file when there is one.
    """
    params = read_parameter_file(path)
    if split_branches(params):
        raise UmxError("%s holds an X-UMX (branches %s), not one UMX target: pass the file "
                       "itself as --model" % (path, ", ".join(
                           t for t in split_branches(params) if t)))
    cfg = _config({k: v.shape for k, v in params.items()}, path, *model_description(path))
    check_parameters(params, parameter_shapes(cfg), path)
    _into_scope(target, params)
    return cfg


def load_xumx(path):
    """Load an X-UMX file (Sony's `x-umx.h5` layout) → {target: UmxConfig} for all of its
    branches, each branch's parameters in nn.parameter_scope(target) under UMX's names."""
    params = read_parameter_file(path)
    branches = split_branches(params)
    if not branches:
        raise UmxError("%s holds no X-UMX (no parameter named like fc1_<target>/affine/W)" % path)
    if None in branches:
        raise UmxError("%s: unexpected parameter %s" % (path, sorted(branches[None])[0]))
    names = tuple([t for t in XUMX_TARGETS if t in branches] +
                  sorted(t for t in branches if t not in XUMX_TARGETS))
    first = branches[names[0]]
    cfg = _config({k: v.shape for k, v in first.items()}, path, *model_description(path))
    cfg = replace(cfg, xumx_branches=names)
    check_parameters(params, xumx_parameter_shapes(cfg, names), path)
    for target in names:
        _into_scope(target, branches[target])
    return {target: cfg for target in names}


def describe(cfgs):
    """One line saying which model runs."""
    cfg = next(iter(cfgs.values()))
    shape = "hidden %d, %d layers, %s, %s, %d Hz" % (
        cfg.hidden_size, cfg.nb_layers, "unidirectional" if cfg.unidirectional else
        "bidirectional", "mono" if cfg.nb_channels == 1 else "stereo", cfg.sample_rate)
    if cfg.xumx_branches:
        return "X-UMX, bridged branches %s (%s)" % (", ".join(cfg.xumx_branches), shape)
    return "UMX, one network per target: %s (%s)" % (", ".join(cfgs), shape)


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


def _randomize(params, cfg, rng):
    """Random values in a realistic range for {name: Variable} of UMX or X-UMX names."""
    for name, var in params.items():
        if name.endswith("bn/var"):
            var.d = rng.rand(*var.shape) + 0.5
        elif name.endswith("/W"):
            var.d = rng.randn(*var.shape) / np.sqrt(var.shape[0])
        elif "/bn/" in name or name.startswith("output"):
            var.d = rng.randn(*var.shape) * 0.1 + (1.0 if name.endswith("gamma") else 0)
        elif name.startswith("lstm"):
            var.d = rng.uniform(-1, 1, var.shape) / np.sqrt(cfg.lstm_hidden_size)


def write_random_weights(folder, cfg, targets=TARGETS, seed=0):
    """Random UMX `<target>.h5` files in the official layout (for tests and benchmarks)."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    for target in targets:
        with nn.parameter_scope("random"):
            OpenUnmix(cfg, input_mean=rng.rand(cfg.nb_output_bins) * 0.1,
                      input_scale=rng.rand(cfg.nb_output_bins) + 0.5)(
                nn.Variable((2, 1, cfg.nb_channels, cfg.nb_output_bins)))
            _randomize(nn.get_parameters(grad_only=False), cfg, rng)
        save_target(os.path.join(folder, target + ".h5"), "random")
        write_json_atomic(os.path.join(folder, target + ".json"), {"config": cfg.to_dict()})
        with nn.parameter_scope("random"):
            nn.clear_parameters()


def write_random_xumx(path, cfg, seed=0):
    """A random X-UMX file in Sony's layout (and its .json), for tests and benchmarks."""
    from model import CrossNet
    rng = np.random.RandomState(seed)
    with nn.parameter_scope("random"):
        CrossNet(cfg, input_mean=rng.rand(cfg.nb_output_bins) * 0.1,
                 input_scale=rng.rand(cfg.nb_output_bins) + 0.5)(
            nn.Variable((2, 1, cfg.nb_channels, cfg.nb_output_bins)))
        _randomize(nn.get_parameters(grad_only=False), cfg, rng)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_target(path, "random")
    write_json_atomic(os.path.splitext(path)[0] + ".json", {"config": cfg.to_dict()})
    with nn.parameter_scope("random"):
        nn.clear_parameters()


def load_models(model, targets):
    """Load the weights for `targets` from --model → {target: UmxConfig}, the parameters in
    nn.parameter_scope(target) (UMX's names).

    model: a UMX folder holding `<target>.h5` per target (the official layout; an official
    `umx*.zip` as it is), or an X-UMX file (Sony's `x-umx.h5`; or a folder or zip holding one).
    For an X-UMX every branch is loaded (its bridges need them all), and the configs say so
    (`xumx_branches`).
    """
    if not os.path.exists(model):
        raise UmxError("model not found: %s" % model)
    if os.path.isfile(model) and zipfile.is_zipfile(model):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                with zipfile.ZipFile(model) as z:
                    z.extractall(tmp)
            except (OSError, zipfile.BadZipFile) as exc:
                raise UmxError("cannot extract %s: %s" % (model, exc))
            # the official archives hold the files at the top or in one folder
            folders = [r for r, _, files in os.walk(tmp) if any(f.endswith(".h5") for f in files)]
            if not folders:
                raise UmxError("%s holds no .h5 weight files" % model)
            return load_models(folders[0], targets)
    if os.path.isfile(model):
        if not model.endswith(".h5"):
            raise UmxError("--model %s is neither a folder, a .zip nor an .h5 weight file" % model)
        cfgs = load_xumx(model)
    else:
        files = sorted(f for f in os.listdir(model) if f.endswith(".h5"))
        if not all(t + ".h5" in files for t in targets) and len(files) == 1 and \
                split_branches(read_parameter_file(os.path.join(model, files[0]))):
            cfgs = load_xumx(os.path.join(model, files[0]))  # a folder holding one X-UMX
        else:
            cfgs = {}
            for target in targets:
                if target + ".h5" not in files:
                    raise UmxError("no weights for target '%s' in %s (found: %s)"
                                   % (target, model, ", ".join(f[:-3] for f in files) or "none"))
                cfgs[target] = load_target(os.path.join(model, target + ".h5"), target)
    missing = [t for t in targets if t not in cfgs]
    if missing:
        raise UmxError("the X-UMX in %s has no branch '%s' (branches: %s)"
                       % (model, missing[0], ", ".join(cfgs)))
    first = cfgs[targets[0]]
    for target, cfg in cfgs.items():
        if (cfg.n_fft, cfg.n_hop, cfg.sample_rate) != (first.n_fft, first.n_hop, first.sample_rate):
            raise UmxError("target '%s' uses another STFT or rate than '%s'" % (target, targets[0]))
    return cfgs
