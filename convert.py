"""Convert open-unmix-pytorch weights to this project's NNabla layout, without PyTorch.

    python convert.py --from-pytorch DIR --out OUT

DIR holds one state dict per target: `<target>-<hash>.pth` as published (umxhq, umx, umxl),
or `<target>.pth` with the `<target>.json` that open-unmix-pytorch's training writes. OUT gets
`<target>.h5` (official NNabla layout) and `<target>.json` (STFT hop and sample rate), which
`test.py --model OUT` and `eval.py --model OUT` load unchanged. An asteroid X-UMX model
package (`XUMX`/`BrokenXUMX`: state_dict and model_args) in DIR becomes `x-umx.h5` in Sony's
layout (`test.py --model OUT/x-umx.h5`).

`.pth` files are read here with `pickle` and `zipfile` alone: both PyTorch serializations (the
zip archive of PyTorch >= 1.6 and the legacy format of the 2019 umx/umxhq checkpoints).
"""
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from args import get_convert_args
from runtime import UmxError, run_cli

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": np.uint16,  # raw bits; no UMX weight uses it
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# --------------------------------------------------------------------------------------
# reading .pth without torch
# --------------------------------------------------------------------------------------

class _StorageType:
    def __init__(self, name):
        if name not in STORAGE_DTYPES:
            raise UmxError("unsupported tensor storage %s" % name)
        self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """A numpy array viewing `storage` like torch._utils._rebuild_tensor_v2 would."""
    array, = storage  # (flat array,) filled once the storage's bytes are known
    if array is None:
        return None  # legacy format, first pass: the data comes after the pickle
    itemsize = array.dtype.itemsize
    if not size:
        return np.array(array[offset])
    return np.lib.stride_tricks.as_strided(array[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride)).copy()


class _Unpickler(pickle.Unpickler):
    """Unpickles a state dict, resolving torch's classes to numpy and storages lazily."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self.load_storage = load_storage
        self.storages = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *unused: data
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "torch" and name == "Size":
            return tuple
        raise UmxError("unexpected object %s.%s in the checkpoint (not a state dict?)"
                       % (module, name))

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if key not in self.storages:
            self.storages[key] = self.load_storage(key, storage_type.dtype, numel)
        return self.storages[key]


def read_pth(path):
    """A PyTorch state dict as {name: ndarray}, from either serialization."""
    return read_package(path)[0]


def read_package(path):
    """(state dict {name: ndarray}, model_args dict or None) of a .pth: a bare state dict, a
    training checkpoint ({'state_dict': ...}), or an asteroid model package (with
    'model_args')."""
    try:
        if zipfile.is_zipfile(path):
            return _read_zip_pth(path)
        return _read_legacy_pth(path)
    except UmxError:
        raise
    except Exception as exc:
        raise UmxError("%s is not a PyTorch checkpoint (%s)" % (path, type(exc).__name__))


def _read_zip_pth(path):
    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
        if not pkl:
            raise UmxError("%s is a zip archive without data.pkl: not a PyTorch checkpoint" % path)
        prefix = pkl[0][: -len("data.pkl")]

        def load_storage(key, dtype, numel):
            raw = z.read(prefix + "data/" + key)
            return (np.frombuffer(raw, dtype=dtype, count=numel),)

        with z.open(pkl[0]) as f:
            return _state_dict(_Unpickler(f, load_storage).load(), path)


def _read_legacy_pth(path):
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise UmxError("%s is not a PyTorch checkpoint" % path)
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        pending = {}

        def load_storage(key, dtype, numel):
            pending[key] = dtype
            return (None,)

        _Unpickler(f, load_storage).load()
        keys = pickle.load(f)
        storages = {}
        for key in keys:  # raw storages follow, in this order: int64 count, then the data
            count, = struct.unpack("<q", f.read(8))
            dtype = pending[str(key)]
            storages[str(key)] = (np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype,
                                                count=count),)
        # now that the data is known, unpickle the state dict again
        f.seek(0)
        for _ in range(3):
            pickle.load(f)
        unpickler = _Unpickler(f, lambda key, dtype, numel: storages[key])
        return _state_dict(unpickler.load(), path)


def _state_dict(obj, path):
    args = None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        # a training checkpoint of open-unmix-pytorch, or an asteroid model package
        args = obj.get("model_args") if isinstance(obj.get("model_args"), dict) else None
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise UmxError("%s does not hold a state dict of tensors" % path)
    return dict(obj), args


# --------------------------------------------------------------------------------------
# mapping to the NNabla layout
# --------------------------------------------------------------------------------------

def _strip(state):
    """Drop what is no weight (STFT windows, BN batch counters); accept 'module.' prefixes."""
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.endswith("window") or key.endswith("num_batches_tracked"):
            continue
        out[key] = value
    return out


def _need(state, key, path):
    if key not in state:
        raise UmxError("%s: missing tensor %s (not an open-unmix model?)" % (path, key))
    return state[key]


# Where one UMX branch's tensors are in a PyTorch state dict: open-unmix-pytorch's names, and
# asteroid's X-UMX names for branch {t}
UMX_KEYS = {"fc1": ("fc1.weight", "bn1."), "fc2": ("fc2.weight", "bn2."),
            "fc3": ("fc3.weight", "bn3."), "lstm": "lstm.", "input_mean": "input_mean",
            "input_scale": "input_scale", "output_scale": "output_scale",
            "output_mean": "output_mean"}
ASTEROID_XUMX_KEYS = {"fc1": ("layer_enc.{t}.enc.0.weight", "layer_enc.{t}.enc.1."),
                      "fc2": ("layer_dec.{t}.dec.0.weight", "layer_dec.{t}.dec.1."),
                      "fc3": ("layer_dec.{t}.dec.3.weight", "layer_dec.{t}.dec.4."),
                      "lstm": "layer_lstm.{t}.", "input_mean": "mean_scale.input_mean_{t}",
                      "input_scale": "mean_scale.input_scale_{t}",
                      "output_scale": "mean_scale.output_scale_{t}",
                      "output_mean": "mean_scale.output_mean_{t}"}


def convert_branch(state, path, keys, n_hop=1024, sample_rate=44100):
    """One UMX network (an open-unmix target, or an X-UMX branch) of a PyTorch state dict →
    ({NNabla name (UMX's): array}, UmxConfig); keys: where its tensors are (UMX_KEYS' form)."""
    from model import UmxConfig, parameter_shapes
    mean = _need(state, keys["input_mean"], path)
    fc1 = _need(state, keys["fc1"][0], path)
    out_scale = _need(state, keys["output_scale"], path)
    lstm = keys["lstm"]
    w_ih0 = _need(state, lstm + "weight_ih_l0", path)
    max_bin, hidden = mean.shape[0], fc1.shape[0]
    if fc1.ndim != 2 or fc1.shape[1] % max_bin:
        raise UmxError("%s: %s has shape %s, not (hidden, nb_channels * %d)"
                       % (path, keys["fc1"][0], fc1.shape, max_bin))
    bidirectional = lstm + "weight_ih_l0_reverse" in state
    nb_layers = 1 + max(int(k[len(lstm):].split("_l")[-1].split("_")[0]) for k in state
                        if k.startswith(lstm + "weight_ih_l"))
    h = w_ih0.shape[0] // 4
    cfg = UmxConfig(nb_channels=fc1.shape[1] // max_bin, hidden_size=hidden, max_bin=max_bin,
                    nb_output_bins=out_scale.shape[0], nb_layers=nb_layers,
                    unidirectional=not bidirectional, n_fft=2 * (out_scale.shape[0] - 1),
                    n_hop=n_hop, sample_rate=int(round(sample_rate)))
    if h != cfg.lstm_hidden_size:
        raise UmxError("%s: %sweight_ih_l0 has shape %s, expected (%d, %d)"
                       % (path, lstm, w_ih0.shape, 4 * cfg.lstm_hidden_size, hidden))
    params = {name: _need(state, keys[name], path)
              for name in ("input_mean", "input_scale", "output_scale", "output_mean")}
    for layer in ("fc1", "fc2", "fc3"):
        weight, bn = keys[layer]
        params[layer + "/affine/W"] = _need(state, weight, path).T  # PyTorch stores (out, in)
        for ours, theirs in (("gamma", "weight"), ("beta", "bias"), ("mean", "running_mean"),
                             ("var", "running_var")):
            params["%s/bn/%s" % (layer, ours)] = _need(state, bn + theirs, path).reshape(1, 1, -1)
    # LSTM: gates (i, f, g, o) in both; NNabla joins [W_ih | W_hh] and the two biases
    directions = ["", "_reverse"] if bidirectional else [""]
    weights, biases = [], []
    for layer in range(nb_layers):
        w_dirs, b_dirs = [], []
        for suffix in directions:
            key = "l%d%s" % (layer, suffix)
            w_ih = _need(state, lstm + "weight_ih_" + key, path)
            w_hh = _need(state, lstm + "weight_hh_" + key, path)
            b = _need(state, lstm + "bias_ih_" + key, path) + _need(state, lstm + "bias_hh_" + key, path)
            w_dirs.append(np.concatenate([w_ih.reshape(4, h, -1), w_hh.reshape(4, h, h)], axis=-1))
            b_dirs.append(b.reshape(4, h))
        weights.append(np.stack(w_dirs))
        biases.append(np.stack(b_dirs))
    params["lstm/lstm/weight_l0"] = weights[0]
    if nb_layers > 1:
        params["lstm/lstm/weight"] = np.stack(weights[1:])
    params["lstm/lstm/bias"] = np.stack(biases)
    params = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
    for name, shape in parameter_shapes(cfg).items():
        if params[name].shape != tuple(shape):
            raise UmxError("%s: %s converts to shape %s, expected %s (another architecture?)"
                           % (path, name, params[name].shape, shape))
    return params, cfg


def convert_state(state, path, meta=None):
    """open-unmix-pytorch state dict → ({NNabla name: array}, UmxConfig)."""
    state = _strip(state)
    sample_rate = float(state.pop("sample_rate", 44100.0))  # a buffer in openunmix 1.0
    n_hop = 1024
    if meta:
        args = meta.get("args", meta)
        n_hop = int(args.get("nhop", n_hop))
        sample_rate = float(meta.get("sample_rate", args.get("sample_rate", sample_rate)))
    params, cfg = convert_branch(state, path, UMX_KEYS, n_hop, sample_rate)
    if meta:
        for name, value in (("hidden_size", cfg.hidden_size), ("nb_channels", cfg.nb_channels),
                            ("nfft", cfg.n_fft), ("unidirectional", cfg.unidirectional)):
            if name in args and args[name] != value:
                raise UmxError("%s: the json says %s=%s but the tensors say %s"
                               % (path, name, args[name], value))
    return params, cfg


def convert_xumx(state, path, model_args):
    """asteroid X-UMX state dict and model_args → ({Sony's x-umx.h5 name: array}, UmxConfig
    of its branches)."""
    from dataclasses import replace
    from model import XUMX_TARGETS, branch_name
    state = _strip(state)
    args = model_args or {}
    sources = list(args.get("sources") or
                   sorted({k.split(".")[1] for k in state if k.startswith("layer_enc.")}))
    names = tuple([t for t in XUMX_TARGETS if t in sources] +
                  [t for t in sources if t not in XUMX_TARGETS])
    params, cfgs = {}, {}
    for target in names:
        keys = {k: tuple(x.format(t=target) for x in v) if isinstance(v, tuple)
                else v.format(t=target) for k, v in ASTEROID_XUMX_KEYS.items()}
        branch, cfgs[target] = convert_branch(state, path, keys, int(args.get("n_hop", 1024)),
                                              float(args.get("sample_rate", 44100)))
        params.update({branch_name(k, target): v for k, v in branch.items()})
    cfg = replace(cfgs[names[0]], xumx_branches=names)
    for target in names:
        if replace(cfgs[target], xumx_branches=names) != cfg:
            raise UmxError("%s: branch '%s' has another architecture than '%s'"
                           % (path, target, names[0]))
    for name, value in (("hidden_size", cfg.hidden_size), ("nb_channels", cfg.nb_channels),
                        ("in_chan", cfg.n_fft), ("max_bin", cfg.max_bin),
                        ("bidirectional", not cfg.unidirectional), ("nb_layers", cfg.nb_layers)):
        if args.get(name) is not None and args[name] != value:
            raise UmxError("%s: model_args say %s=%s but the tensors say %s"
                           % (path, name, args[name], value))
    return params, cfg


def is_asteroid_xumx(state):
    return any(k.startswith(("layer_enc.", "module.layer_enc.")) for k in state)


def find_checkpoints(folder):
    """{name: (pth path, json path or None)} of a folder of open-unmix-pytorch weights (name:
    the target) or of an asteroid X-UMX (name: the file's)."""
    found = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".pth"):
            target = name[:-4].split("-")[0]  # '<target>-<hash>.pth' or '<target>.pth'
            meta = os.path.join(folder, target + ".json")
            found[target] = (os.path.join(folder, name), meta if os.path.isfile(meta) else None)
    if not found:
        raise UmxError("no .pth files in %s" % folder)
    return found


def convert_folder(src, out, targets=None):
    """Convert every (or the named) target of `src` into `out`, all or nothing: UMX targets
    to `<target>.h5`, an asteroid X-UMX to Sony's `x-umx.h5` (each with its .json)."""
    from files import output_folder, read_json, refuse_overlaps, staged_folder, write_json_atomic
    checkpoints = find_checkpoints(src)
    targets = targets or list(checkpoints)
    missing = [t for t in targets if t not in checkpoints]
    if missing:
        raise UmxError("no checkpoint for target '%s' in %s" % (missing[0], src))
    converted = {}  # output name → (params, cfg, source file)
    for target in targets:
        pth, meta_path = checkpoints[target]
        state, model_args = read_package(pth)
        if is_asteroid_xumx(state):
            converted["x-umx"] = convert_xumx(state, pth, model_args) + (pth,)
        else:
            meta = read_json(meta_path, "open-unmix model description") if meta_path else None
            converted[target] = convert_state(state, pth, meta) + (pth,)
    refuse_overlaps([(path, "the checkpoint file") for t in targets
                     for path in checkpoints[t] if path],
                    [(os.path.join(out, name + ext), "--out") for name in converted
                     for ext in (".h5", ".json")])
    with output_folder(out, "--out"), staged_folder(out) as staging:
        for name, (params, cfg, pth) in converted.items():
            save_arrays(os.path.join(staging, name + ".h5"), params)
            write_json_atomic(os.path.join(staging, name + ".json"),
                              {"config": cfg.to_dict(), "converted_from": os.path.basename(pth)})
    return {name: cfg for name, (_, cfg, _) in converted.items()}


def save_arrays(path, params):
    """{name: array} as an NNabla parameter file."""
    import nnabla as nn
    from weights import save_parameters_atomic
    variables = {}
    for name, value in params.items():
        variables[name] = nn.Variable.from_numpy_array(value)
    save_parameters_atomic(path, variables)


def run(args):
    cfgs = convert_folder(args.from_pytorch, args.out, args.targets)
    for name, cfg in cfgs.items():
        print("%s: %shidden %d, %d channels, max_bin %d, %s -> %s"
              % (name, "X-UMX branches %s, " % ", ".join(cfg.xumx_branches)
                 if cfg.xumx_branches else "", cfg.hidden_size, cfg.nb_channels, cfg.max_bin,
                 "unidirectional" if cfg.unidirectional else "bidirectional",
                 os.path.join(args.out, name + ".h5")))


def main(argv=None):
    run_cli(run, get_convert_args(argv))


if __name__ == "__main__":
    main()
