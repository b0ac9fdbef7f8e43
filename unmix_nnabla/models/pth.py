"""PyTorch checkpoints (`.pth`) read without torch, as untrusted input.

A `.pth` file is made of pickles, and unpickling can call any function Python can import: a
checkpoint downloaded from the internet could run a command. Every pickle here goes through
`RestrictedUnpickler`, which resolves only the few names a state dict needs (OrderedDict,
torch's tensor and parameter rebuilders, the storage types, torch's version string), each
replaced by an object of this module that checks its arguments; it sets an object's state
(pickle's BUILD) only on an OrderedDict, and then ignores it. Anything else is refused before
it runs, with one line naming what the file asked for.

Tensors are never views into memory the file did not provide: each storage's byte count is
checked against the bytes present, and each tensor's size, stride and offset against its
storage (every element index inside it, strides positive, no more elements than the storage
holds) before its values are copied out.

Both serializations are read:
- zip (torch >= 1.6): `<prefix>/data.pkl`, each storage in `<prefix>/data/<key>`;
- legacy (torch < 1.6, the 2019 umx/umxhq files): five pickles (magic number, protocol,
  system information, the object, the storage keys), then each storage as an int64 element
  count followed by its bytes.
"""
import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from unmix_nnabla.base.runtime import UmxError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,  # bits, widened to float32 by `_tensor`
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
MAX_NESTING = 64  # containers inside containers, far more than any checkpoint holds


class Refused(UmxError):
    """The file asks for something a checkpoint of tensors never needs."""


class StorageType:
    """What a pickled `torch.<Name>Storage` resolves to: its element type (never called)."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class Version(str):
    """torch's version string (`torch.torch_version.TorchVersion`, a str), as asteroid
    packages record it."""


class TensorRef:
    """A tensor as the pickle describes it: its storage (by key), offset, size and stride.
    `materialize` turns it into an array once the storages are known."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class StorageRef:
    """A storage as the pickle names it: key, element type, element count, and for legacy
    views the (offset, count) of the part of the root storage it is."""

    def __init__(self, key, storage_type, numel, view=None):
        self.key, self.dtype, self.numel, self.view = key, storage_type.dtype, numel, view
        self.bfloat16 = storage_type.name == "BFloat16Storage"


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor(_v2): only records what the pickle says; checked later."""
    if not isinstance(storage, StorageRef):
        raise Refused("a tensor without a storage")
    return TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    """torch._utils._rebuild_parameter(_with_state): a parameter is its tensor."""
    if not isinstance(data, TensorRef):
        raise Refused("a parameter that is not a tensor")
    return data


# the only globals a state dict (or an asteroid model package) needs
ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("torch.torch_version", "TorchVersion"): Version,
}
ALLOWED.update((("torch", name), None) for name in STORAGE_DTYPES)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only `ALLOWED` names and builds only OrderedDicts.

    pickle's pure-Python unpickler, so that BUILD can be checked too (the C unpickler would
    call any object's __setstate__). storage(pid) maps a persistent id to a StorageRef; None:
    the pickle may hold none (the legacy file's header pickles).
    """
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, storage=None):
        super().__init__(file)
        self.storage = storage

    def find_class(self, module, name):
        key = (module, name)
        if key not in ALLOWED:
            raise Refused("it asks for %s.%s, which a checkpoint of tensors never needs"
                          % (module, name))
        value = ALLOWED[key]
        return StorageType(name) if value is None else value

    def persistent_load(self, pid):
        if self.storage is None:
            raise Refused("a storage where none can be")
        return self.storage(pid)

    def load_build(self):
        state = self.stack.pop()
        if type(self.stack[-1]) is not OrderedDict and state:
            raise Refused("it sets the state of a %s" % type(self.stack[-1]).__name__)
        # an OrderedDict's state is the state dict's `_metadata`: not needed here

    dispatch[pickle.BUILD[0]] = load_build


def _storage_id(pid):
    """('storage', storage type, key, location, numel[, view metadata]) → its parts, checked."""
    if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
        raise Refused("an unknown persistent object %r" % (pid[:1] if isinstance(pid, tuple) else pid,))
    _, storage_type, key, _, numel = pid[:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, StorageType):
        raise Refused("a storage of unknown type")
    if not isinstance(key, (str, int)) or isinstance(key, bool) or not _count(numel):
        raise Refused("a storage with a malformed key or size")
    return storage_type, str(key), numel, view


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_checkpoint(path):
    """(state dict {name: ndarray}, model_args dict or None) of a `.pth`: a bare state dict, a
    training checkpoint ({'state_dict': ...}) or an asteroid model package (with
    'model_args'). Anything else, or anything unsafe, is one UmxError naming the file."""
    try:
        if zipfile.is_zipfile(path):
            obj = _read_zip(path)
        else:
            obj = _read_legacy(path)
    except Refused as exc:
        raise UmxError("%s: refused to load it: %s" % (path, exc)) from None
    except UmxError as exc:
        raise UmxError("%s: %s" % (path, exc)) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, struct.error, zipfile.BadZipFile, OSError, RecursionError,
            MemoryError, OverflowError) as exc:
        raise UmxError("%s is not a PyTorch checkpoint (%s)" % (path, type(exc).__name__)) from None
    return _state_dict(obj, path)


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise UmxError("a zip archive with %d data.pkl: not a PyTorch checkpoint" % len(pickles))
        prefix = pickles[0][:-len("data.pkl")]
        names = set(archive.namelist())
        big_endian = prefix + "byteorder" in names and \
            archive.read(prefix + "byteorder").strip() == b"big"
        refs = {}

        def storage(pid):
            storage_type, key, numel, _ = _storage_id(pid)
            refs.setdefault(key, StorageRef(key, storage_type, numel))
            return refs[key]

        with archive.open(pickles[0]) as f:
            obj = RestrictedUnpickler(io.BytesIO(f.read()), storage).load()
        arrays = {}
        for key, ref in refs.items():
            entry = prefix + "data/" + key
            if entry not in names:
                raise UmxError("storage %s is missing from the archive" % key)
            raw = archive.read(entry)
            arrays[key] = _storage_array(ref, raw, big_endian)
    return materialize(obj, arrays)


def _read_legacy(path):
    with open(path, "rb") as f:
        header = RestrictedUnpickler(f)
        if header.load() != LEGACY_MAGIC:
            raise UmxError("not a PyTorch checkpoint")
        protocol = header.load()
        if not isinstance(protocol, int):
            raise UmxError("not a PyTorch checkpoint (protocol %r)" % (protocol,))
        header.load()  # system information: plain values
        refs = {}

        def storage(pid):
            storage_type, key, numel, view = _storage_id(pid)
            root = refs.setdefault(key, StorageRef(key, storage_type, numel))
            if view is None:
                return root
            # (view key, offset, count): a part of the root storage
            if not (isinstance(view, tuple) and len(view) == 3 and _count(view[1]) and
                    _count(view[2]) and view[1] + view[2] <= numel):
                raise Refused("a storage view outside its storage")
            return StorageRef(key, storage_type, view[2], (view[1], view[2]))

        obj = RestrictedUnpickler(f, storage).load()
        keys = RestrictedUnpickler(f).load()
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(refs):
            raise UmxError("its storage list does not match its tensors")
        arrays = {}
        for key in map(str, keys):  # in this order: int64 count, then the elements
            ref = refs[key]
            count, = struct.unpack("<q", _read_exactly(f, 8))
            if count != ref.numel:
                raise UmxError("storage %s holds %d elements, its tensors say %d"
                               % (key, count, ref.numel))
            arrays[key] = _storage_array(ref, _read_exactly(f, count * ref.dtype.itemsize))
    return materialize(obj, arrays)


def _read_exactly(f, size):
    data = f.read(size)
    if len(data) != size:
        raise UmxError("the file ends %d bytes early" % (size - len(data)))
    return data


def _storage_array(ref, raw, big_endian=False):
    """A storage's elements from its bytes, which must be exactly numel elements."""
    if len(raw) != ref.numel * ref.dtype.itemsize:
        raise UmxError("storage %s holds %d bytes, its header says %d elements of %d bytes"
                       % (ref.key, len(raw), ref.numel, ref.dtype.itemsize))
    dtype = ref.dtype.newbyteorder(">") if big_endian else ref.dtype
    return np.frombuffer(raw, dtype=dtype)


def materialize(obj, arrays, depth=0):
    """obj with every TensorRef replaced by its checked copy (containers rebuilt)."""
    if depth > MAX_NESTING:
        raise UmxError("containers nested more than %d deep" % MAX_NESTING)
    if isinstance(obj, TensorRef):
        return _tensor(obj, arrays)
    if isinstance(obj, dict):
        return type(obj)((k, materialize(v, arrays, depth + 1)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not isinstance(obj, Version):
        return type(obj)(materialize(v, arrays, depth + 1) for v in obj)
    return obj


def _tensor(ref, arrays):
    """The tensor's values [shape=size], after checking its view against its storage."""
    storage = ref.storage
    elements = arrays[storage.key]
    if storage.view is not None:
        offset, count = storage.view
        elements = elements[offset:offset + count]
    offset, size, stride = ref.offset, ref.size, ref.stride
    if not (_count(offset) and isinstance(size, tuple) and isinstance(stride, tuple) and
            len(size) == len(stride) and all(map(_count, size)) and all(map(_count, stride))):
        raise UmxError("a tensor of storage %s has a malformed size %r, stride %r or offset %r"
                       % (storage.key, size, stride, offset))
    if any(n > 1 and s == 0 for n, s in zip(size, stride)):
        raise UmxError("a tensor of storage %s repeats its elements (stride 0)" % storage.key)
    count = int(np.prod(size, dtype=object)) if size else 1
    if count:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= elements.size or count > elements.size:
            raise UmxError("a tensor of size %s (stride %s, offset %d) reaches past its "
                           "storage %s of %d elements" % (size, stride, offset, storage.key,
                                                          elements.size))
        values = np.lib.stride_tricks.as_strided(
            elements[offset:], shape=size, strides=[s * elements.itemsize for s in stride],
            writeable=False).copy()
    else:
        values = np.zeros(size, elements.dtype)
    values = values.astype(values.dtype.newbyteorder("="), copy=False)
    if storage.bfloat16:  # the upper half of a float32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values


def _state_dict(obj, path):
    args = None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        # a training checkpoint of open-unmix-pytorch, or an asteroid model package
        args = obj.get("model_args") if isinstance(obj.get("model_args"), dict) else None
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        raise UmxError("%s does not hold a state dict of tensors" % path)
    return dict(obj), args
