"""Weight files: UMX's `<target>.h5` (the official NNabla layout, one target per file, names
relative to `nn.parameter_scope(target)`) and X-UMX's one file (Sony's `x-umx.h5`): found,
checked against the layout (`layout.py`) before their data is read, loaded and saved.

Every name and shape is checked and every value must be finite (NNabla's own loader would
silently initialize a missing name at random); the STFT hop and the sample rate, which the
shapes cannot tell, come from a `<name>.json` beside the file (training and convert.py write
it), checked like every configuration (`layout.check_config`), or are the published models'.
"""
import io
import os
import tempfile
import zipfile
from dataclasses import replace

import h5py
import nnabla as nn
import numpy as np

from unmix_nnabla.base.context import ensure_context
from unmix_nnabla.base.files import atomic_path, read_json, sha256_of
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.vocabulary import SOURCES, XUMX_BRANCHES
from unmix_nnabla.networks.layout import (check_config, config_field, config_from_shapes,
                                          parameter_shapes, split_branches, xumx_parameter_shapes)

PUBLISHED_HOP, PUBLISHED_RATE = 1024, 44100
# the fields of a `<name>.json` config checked against the shapes (hop and rate come from it)
DESCRIBED_FIELDS = ("nb_channels", "hidden_size", "max_bin", "nb_output_bins", "nb_layers",
                    "unidirectional", "n_fft")


def parameter_shapes_in(path):
    """{name: shape} of the datasets of an .h5 file, read without their data."""
    shapes = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: shapes.__setitem__(name, tuple(obj.shape))
                         if isinstance(obj, h5py.Dataset) else None)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError):
        raise UmxError("%s is not an NNabla weight file (.h5), or it is damaged" % path) from None
    if not shapes:
        raise UmxError("%s holds no parameters" % path)
    return shapes


def read_parameter_file(path, expected=None):
    """The parameters of one NNabla .h5 file: {name: ndarray} (names as stored), all finite
    floats. expected {name: shape}: the names and shapes are checked first (`check_parameters`),
    before any data is read."""
    if expected is not None:
        check_parameters(parameter_shapes_in(path), expected, path)
    try:
        with h5py.File(path, "r") as f:
            params = {}
            f.visititems(lambda name, obj: params.__setitem__(name, obj[()])
                         if isinstance(obj, h5py.Dataset) else None)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError):
        raise UmxError("%s is not an NNabla weight file (.h5), or it is damaged" % path) from None
    if not params:
        raise UmxError("%s holds no parameters" % path)
    for name, value in params.items():
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            raise UmxError("%s: parameter %s holds non-float values" % (path, name))
        if not np.all(np.isfinite(value)):
            raise UmxError("%s: parameter %s holds NaN or infinite values" % (path, name))
    return params


def check_parameters(params, expected, path):
    """Raise UmxError naming the first parameter whose name or shape differs from `expected`
    ({name: shape}); params: {name: array or shape}."""
    for name, shape in expected.items():
        if name not in params:
            raise UmxError("%s: missing parameter %s" % (path, name))
        found = getattr(params[name], "shape", params[name])
        if tuple(found) != tuple(shape):
            raise UmxError("%s: parameter %s has shape %s, expected %s"
                           % (path, name, tuple(found), tuple(shape)))
    extra = sorted(set(params) - set(expected))
    if extra:
        raise UmxError("%s: unexpected parameter %s" % (path, extra[0]))


def restore_parameters(path, scope):
    """Set the parameters that exist in nn.parameter_scope(scope) from `path`, which must hold
    exactly those names and shapes."""
    with nn.parameter_scope(scope):
        current = nn.get_parameters(grad_only=False)
    params = read_parameter_file(path, {k: v.shape for k, v in current.items()})
    for name, var in current.items():
        var.d = params[name]


def model_description(path):
    """The configuration fields of the `.json` that training and convert.py write beside a
    weight file ({} without one), each checked where it is read."""
    meta_path = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(meta_path):
        return {}
    meta = read_json(meta_path, "model description")
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        raise UmxError("%s is not a model description written by train.py or convert.py (no "
                       "'config')" % meta_path)
    fields = {key: config_field(config, key, meta_path, kind=bool if key == "unidirectional"
                                else int) for key in DESCRIBED_FIELDS + ("n_hop", "sample_rate")}
    fields["path"] = meta_path
    return {k: v for k, v in fields.items() if v is not None}


def branch_config(shapes, path):
    """The configuration of one branch (UMX names) from its shapes and the file's `.json`, the
    two cross-checked, the whole checked (`check_config`)."""
    described = model_description(path)
    cfg = config_from_shapes(shapes, described.get("n_hop", PUBLISHED_HOP),
                             described.get("sample_rate", PUBLISHED_RATE), where=path)
    for key in DESCRIBED_FIELDS:
        if key in described and described[key] != getattr(cfg, key):
            raise UmxError("%s says %s = %s, but the weights in %s have %s"
                           % (described["path"], key, described[key], path, getattr(cfg, key)))
    return check_config(cfg, "%s (with %s)" % (path, described["path"]) if described else path)


def _into_scope(scope, params):
    """Set {name: ndarray} as the parameters of nn.parameter_scope(scope), in float32 (the
    models' type: a float64 file's arrays set as they are would make float64 parameters).
    New parameters are registered as constants (separation); parameters that exist keep
    their flag: a training graph's stay trainable (NNabla's get_parameter_or_create would
    overwrite it, and the solver would then receive none of them)."""
    with nn.parameter_scope(scope):
        existing = nn.get_parameters(grad_only=False)
        for name, value in params.items():
            var = existing.get(name)
            if var is None:
                var = nn.parameter.get_parameter_or_create(name, value.shape, need_grad=False)
            elif var.shape != value.shape:
                raise UmxError("the weights' %s has shape %s, the graph's %s"
                               % (name, value.shape, var.shape))
            var.d = value.astype(np.float32, copy=False)


def is_xumx_file(path):
    """Whether an .h5 holds an X-UMX (Sony's suffixed names), from its names alone."""
    return bool(split_branches(parameter_shapes_in(path)))


def load_target(path, target, load=True):
    """Load a UMX `<target>.h5` into `nn.parameter_scope(target)`; return its UmxConfig
    (load=False: only check the file's names and shapes)."""
    shapes = parameter_shapes_in(path)
    if split_branches(shapes):
        raise UmxError("%s holds an X-UMX (branches %s), not one UMX target: pass the file "
                       "itself as --model" % (path, ", ".join(
                           t for t in split_branches(shapes) if t)))
    cfg = branch_config(shapes, path)
    if load:
        _into_scope(target, read_parameter_file(path, parameter_shapes(cfg)))
    else:
        check_parameters(shapes, parameter_shapes(cfg), path)
    return cfg


def load_xumx(path, load=True):
    """Load an X-UMX file (Sony's `x-umx.h5` layout) → {target: UmxConfig} for all of its
    branches, each branch's parameters in nn.parameter_scope(target) under UMX's names
    (load=False: only check the file's names and shapes)."""
    shapes = parameter_shapes_in(path)
    branches = split_branches(shapes)
    if not branches:
        raise UmxError("%s holds no X-UMX (no parameter named like fc1_<target>/affine/W)" % path)
    if None in branches:
        raise UmxError("%s: unexpected parameter %s" % (path, sorted(branches[None])[0]))
    names = tuple([t for t in XUMX_BRANCHES if t in branches] +
                  sorted(t for t in branches if t not in XUMX_BRANCHES))
    cfg = replace(branch_config(branches[names[0]], path), xumx_branches=names)
    if load:
        params = split_branches(read_parameter_file(path, xumx_parameter_shapes(cfg, names)))
        for target in names:
            _into_scope(target, params[target])
    else:
        check_parameters(shapes, xumx_parameter_shapes(cfg, names), path)
    return {target: cfg for target in names}


def describe(cfgs):
    """One line saying which model runs."""
    cfg = next(iter(cfgs.values()))
    shape = "hidden %d, %d layers, %s, %s, %d Hz" % (
        cfg.hidden_size, cfg.nb_layers, "unidirectional" if cfg.unidirectional else
        "bidirectional", "mono" if cfg.nb_channels == 1 else "stereo", cfg.sample_rate)
    if cfg.is_xumx:
        return "X-UMX, bridged branches %s (%s)" % (", ".join(cfg.xumx_branches), shape)
    return "UMX, one network per target: %s (%s)" % (", ".join(cfgs), shape)


def h5_bytes(fill):
    """An HDF5 file built in memory by fill(h5py.File) → its bytes. Written to disk with a
    plain write, a full disk is one clean error (HDF5 writing a file of its own prints
    tracebacks from its destructors and can crash the process)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    return buffer.getvalue()


def parameter_bytes(params):
    """{name: Variable} as NNabla's .h5 parameter file (`nn.save_parameters`' format)."""
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


def save_arrays(path, params):
    """{name: array} as an NNabla parameter file, atomically."""
    save_parameters_atomic(path, {name: nn.Variable.from_numpy_array(value)
                                  for name, value in params.items()})


def load_weights(path, targets=None, load=True):
    """Load the weights at `path` → {target: UmxConfig}, the parameters in
    nn.parameter_scope(target) (UMX's names). A published model's name is resolved above this
    loader (`hub.load_models`, which users call).

    path: a UMX folder holding `<target>.h5` per target (the official layout; an official
    `umx*.zip` as it is), or an X-UMX file (Sony's `x-umx.h5`; or a folder or zip holding one).
    targets: the ones to load (None: every target the model holds). For an X-UMX every branch
    is loaded (its bridges need them all), and the configs say so (`xumx_branches`). A folder
    or zip holding more than one model is refused, naming them. load=False: only check the
    files' names and shapes (nothing is read or loaded).
    """
    if not os.path.exists(path):
        raise UmxError("model not found: %s" % path)
    if load:
        ensure_context()
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory() as tmp:
            return load_weights(extract_model(path, tmp), targets, load)
    if os.path.isfile(path):
        if not path.endswith(".h5"):
            raise UmxError("--model %s is neither a folder, a .zip nor an .h5 weight file" % path)
        cfgs = load_xumx(path, load)
    else:
        cfgs = _load_folder(path, targets, load)
    targets = list(targets or cfgs)
    missing = [t for t in targets if t not in cfgs]
    if missing:
        raise UmxError("the X-UMX in %s has no branch '%s' (branches: %s)"
                       % (path, missing[0], ", ".join(cfgs)))
    first = cfgs[targets[0]]
    for target, cfg in cfgs.items():
        if (cfg.n_fft, cfg.n_hop, cfg.sample_rate) != (first.n_fft, first.n_hop, first.sample_rate):
            raise UmxError("target '%s' uses another STFT or rate than '%s'" % (target, targets[0]))
    return cfgs


def model_files(path):
    """{file name: SHA-256} of the weight files at `path` (what identifies a model): the
    file (and the .json beside it), or the folder's .h5 and .zip files and the .json beside
    each .h5 (not a cache's MANIFEST.json or SOURCE.json: a model unpacked by hand is the
    same model)."""
    if os.path.isfile(path):
        paths = [path, os.path.splitext(path)[0] + ".json"]
    else:
        files = sorted(os.listdir(path))
        paths = [os.path.join(path, f) for f in files if f.endswith((".h5", ".zip")) or
                 (f.endswith(".json") and f[:-len(".json")] + ".h5" in files)]
    return {os.path.basename(p): sha256_of(p) for p in paths if os.path.isfile(p)}


def _load_folder(folder, targets, load):
    """A folder's one model: an X-UMX file, or UMX `<target>.h5` files (those asked for, or
    all of them in SOURCES' order first)."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".h5") and
                   os.path.isfile(os.path.join(folder, f)))
    xumx = [f for f in files if is_xumx_file(os.path.join(folder, f))]
    if xumx and len(files) > 1:
        raise UmxError("%s holds more than one model (%s): pass one file, or a folder of one "
                       "model" % (folder, ", ".join(files)))
    if xumx:
        return load_xumx(os.path.join(folder, xumx[0]), load)
    found = [f[:-3] for f in files]
    if not found:
        pth = sorted(f for f in os.listdir(folder) if f.endswith(".pth"))
        hint = (": it holds PyTorch weights (%s), convert them first: python convert.py "
                 "--from-pytorch %s --out %s-nnabla" % (", ".join(pth), folder,
                                                         folder.rstrip("/"))) if pth else ""
        raise UmxError("no weight files (.h5) in %s%s" % (folder, hint))
    if targets is None:
        targets = [t for t in SOURCES if t in found] + [t for t in found if t not in SOURCES]
    cfgs = {}
    for target in targets:
        if target not in found:
            raise UmxError("no weights for target '%s' in %s (found: %s)"
                           % (target, folder, ", ".join(found)))
        cfgs[target] = load_target(os.path.join(folder, target + ".h5"), target, load)
    return cfgs


def extract_model(archive, tmp):
    """Extract a weights zip into `tmp` → the one folder of it that holds .h5 files (the
    official archives hold the files at the top or in one folder); more is refused."""
    try:
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():  # members stay inside tmp
                if name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
                    raise UmxError("%s holds a file outside its folder (%s)" % (archive, name))
            z.extractall(tmp)
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
        raise UmxError("cannot extract %s: %s" % (archive, exc))
    folders = sorted(r for r, _, files in os.walk(tmp) if any(f.endswith(".h5") for f in files))
    if not folders:
        raise UmxError("%s holds no .h5 weight files" % archive)
    if len(folders) > 1:
        names = [os.path.relpath(f, tmp).replace(".", "(top)", 1) if f == tmp
                 else os.path.relpath(f, tmp) + "/" for f in folders]
        raise UmxError("%s holds more than one model (%s): extract the one to use"
                       % (archive, ", ".join(names)))
    return folders[0]
