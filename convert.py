"""Convert open-unmix-pytorch weights to this project's NNabla layout, without PyTorch.

    python convert.py --from-pytorch DIR --out OUT

DIR holds one state dict per target: `<target>-<hash>.pth` as published (umxhq, umx, umxl),
or `<target>.pth` with the `<target>.json` that open-unmix-pytorch's training writes. OUT gets
`<target>.h5` (official NNabla layout) and `<target>.json` (STFT hop and sample rate), which
`test.py --model OUT` and `eval.py --model OUT` load unchanged.

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
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a training checkpoint of open-unmix-pytorch
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise UmxError("%s does not hold a state dict of tensors" % path)
    return dict(obj)


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


def convert_state(state, path, meta=None):
    """open-unmix-pytorch state dict → ({NNabla name: array}, UmxConfig)."""
    from model import UmxConfig, parameter_shapes
    state = _strip(state)
    sample_rate = float(state.pop("sample_rate", 44100.0))  # a buffer in openunmix 1.0
    mean = _need(state, "input_mean", path)
    fc1 = _need(state, "fc1.weight", path)
    out_scale = _need(state, "output_scale", path)
    w_ih0 = _need(state, "lstm.weight_ih_l0", path)
    max_bin, hidden = mean.shape[0], fc1.shape[0]
    if fc1.ndim != 2 or fc1.shape[1] % max_bin:
        raise UmxError("%s: fc1.weight has shape %s, not (hidden, nb_channels * %d)"
                       % (path, fc1.shape, max_bin))
    bidirectional = "lstm.weight_ih_l0_reverse" in state
    nb_layers = 1 + max(int(k.split("_l")[-1].split("_")[0]) for k in state
                        if k.startswith("lstm.weight_ih_l"))
    h = w_ih0.shape[0] // 4
    n_hop, nb_channels = 1024, fc1.shape[1] // max_bin
    if meta:
        args = meta.get("args", meta)
        n_hop = int(args.get("nhop", n_hop))
        sample_rate = float(meta.get("sample_rate", args.get("sample_rate", sample_rate)))
        for name, value in (("hidden_size", hidden), ("nb_channels", nb_channels),
                            ("nfft", 2 * (out_scale.shape[0] - 1)),
                            ("unidirectional", not bidirectional)):
            if name in args and args[name] != value:
                raise UmxError("%s: the json says %s=%s but the tensors say %s"
                               % (path, name, args[name], value))
    cfg = UmxConfig(nb_channels=nb_channels, hidden_size=hidden, max_bin=max_bin,
                    nb_output_bins=out_scale.shape[0], nb_layers=nb_layers,
                    unidirectional=not bidirectional, n_fft=2 * (out_scale.shape[0] - 1),
                    n_hop=n_hop, sample_rate=int(round(sample_rate)))
    if h != cfg.lstm_hidden_size:
        raise UmxError("%s: lstm.weight_ih_l0 has shape %s, expected (%d, %d)"
                       % (path, w_ih0.shape, 4 * cfg.lstm_hidden_size, hidden))
    f32 = (lambda a: np.ascontiguousarray(a, np.float32))
    params = {"input_mean": mean, "input_scale": _need(state, "input_scale", path),
              "output_scale": out_scale, "output_mean": _need(state, "output_mean", path),
              "fc1/affine/W": fc1.T,  # PyTorch's Linear stores (out, in)
              "fc2/affine/W": _need(state, "fc2.weight", path).T,
              "fc3/affine/W": _need(state, "fc3.weight", path).T}
    for i, layer in enumerate(("fc1", "fc2", "fc3")):
        bn = "bn%d." % (i + 1)
        for ours, theirs in (("gamma", "weight"), ("beta", "bias"), ("mean", "running_mean"),
                             ("var", "running_var")):
            params["%s/bn/%s" % (layer, ours)] = _need(state, bn + theirs, path).reshape(1, 1, -1)
    # LSTM: gates (i, f, g, o) in both; NNabla joins [W_ih | W_hh] and the two biases
    dirs = ["", "_reverse"] if bidirectional else [""]
    weights, biases = [], []
    for layer in range(nb_layers):
        w_dirs, b_dirs = [], []
        for suffix in dirs:
            key = "l%d%s" % (layer, suffix)
            w_ih = _need(state, "lstm.weight_ih_" + key, path)
            w_hh = _need(state, "lstm.weight_hh_" + key, path)
            b = _need(state, "lstm.bias_ih_" + key, path) + _need(state, "lstm.bias_hh_" + key, path)
            w_dirs.append(np.concatenate([w_ih.reshape(4, h, -1), w_hh.reshape(4, h, h)], axis=-1))
            b_dirs.append(b.reshape(4, h))
        weights.append(np.stack(w_dirs))
        biases.append(np.stack(b_dirs))
    params["lstm/lstm/weight_l0"] = weights[0]
    if nb_layers > 1:
        params["lstm/lstm/weight"] = np.stack(weights[1:])
    params["lstm/lstm/bias"] = np.stack(biases)
    params = {k: f32(v) for k, v in params.items()}
    for name, shape in parameter_shapes(cfg).items():
        if params[name].shape != tuple(shape):
            raise UmxError("%s: %s converts to shape %s, expected %s (another architecture?)"
                           % (path, name, params[name].shape, shape))
    return params, cfg


def find_checkpoints(folder):
    """{target: (pth path, json path or None)} of a folder of open-unmix-pytorch weights."""
    if not os.path.isdir(folder):
        raise UmxError("--from-pytorch %s is not a folder" % folder)
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
    """Convert every (or the named) target of `src` into `out`, all or nothing."""
    import nnabla as nn
    from weights import save_target
    from files import output_folder, read_json, refuse_overlaps, staged_folder, write_json_atomic
    checkpoints = find_checkpoints(src)
    targets = targets or list(checkpoints)
    missing = [t for t in targets if t not in checkpoints]
    if missing:
        raise UmxError("no checkpoint for target '%s' in %s" % (missing[0], src))
    refuse_overlaps([(path, "the checkpoint file") for t in targets
                     for path in checkpoints[t] if path],
                    [(os.path.join(out, t + ext), "--out") for t in targets
                     for ext in (".h5", ".json")])
    converted = {}
    for target in targets:
        pth, meta_path = checkpoints[target]
        meta = read_json(meta_path, "open-unmix model description") if meta_path else None
        converted[target] = convert_state(read_pth(pth), pth, meta)
    with output_folder(out, "--out"), staged_folder(out) as staging:
        for target, (params, cfg) in converted.items():
            with nn.parameter_scope("_convert"):
                nn.clear_parameters()
                for name, value in params.items():
                    nn.parameter.get_parameter_or_create(name, value.shape).d = value
            save_target(os.path.join(staging, target + ".h5"), "_convert")
            with nn.parameter_scope("_convert"):
                nn.clear_parameters()
            write_json_atomic(os.path.join(staging, target + ".json"),
                              {"config": cfg.to_dict(),
                               "converted_from": os.path.basename(checkpoints[target][0])})
    return {t: c for t, (_, c) in converted.items()}


def run(args):
    cfgs = convert_folder(args.from_pytorch, args.out, args.targets)
    for target, cfg in cfgs.items():
        print("%s: hidden %d, %d channels, max_bin %d, %s -> %s"
              % (target, cfg.hidden_size, cfg.nb_channels, cfg.max_bin,
                 "unidirectional" if cfg.unidirectional else "bidirectional",
                 os.path.join(args.out, target + ".h5")))


def main(argv=None):
    run_cli(run, get_convert_args(argv))


if __name__ == "__main__":
    main()
