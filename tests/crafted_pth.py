"""PyTorch checkpoints written without torch, for the tests of untrusted files: the real
layouts (legacy and zip), with whatever tensors, views or pickled payloads a test asks for.

`Global(module, name)` pickles as a reference to module.name, `Call(function, args)` as a
call of it, `Tensor(values, ...)` as torch's `_rebuild_tensor_v2` on a storage (size, stride
and offset can be set to lie about the storage).
"""
import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Global:
    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # never called: pickle asks that a reduced function be callable
        raise AssertionError("not to be called")


class Call:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args

    def __call__(self, *args):  # never called: pickle asks that a reduced function be callable
        raise AssertionError("not to be called")


class Storage:
    """A storage: its elements (float32), its key, and the element count the pickle claims."""

    def __init__(self, key, values, numel=None):
        self.key, self.values = key, np.ascontiguousarray(values, np.float32).ravel()
        self.numel = self.values.size if numel is None else numel

    def pid(self):
        return ("storage", Global("torch", "FloatStorage"), self.key, "cpu", self.numel)


def tensor(storage, size, stride, offset=0):
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, tuple(size),
                tuple(stride), False, OrderedDict())


class _Writer(pickle._Pickler):
    """pickle's Python pickler, writing Global as a GLOBAL opcode and Storage as a persistent id."""

    def __init__(self, file):
        super().__init__(file, protocol=2)
        self.storages = {}

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            self.storages[obj.key] = obj
            return obj.pid()
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + ("%s\n%s\n" % (obj.module, obj.name)).encode())
            return
        super().save(obj, save_persistent_id)


def dumps(obj):
    """obj → (pickle bytes, {key: Storage} it refers to)."""
    buffer = io.BytesIO()
    writer = _Writer(buffer)
    writer.dump(obj)
    return buffer.getvalue(), writer.storages


def state_of(arrays):
    """{name: ndarray} → an OrderedDict of tensors, one contiguous storage each."""
    state = OrderedDict()
    for k, (name, value) in enumerate(arrays.items()):
        value = np.asarray(value, np.float32)
        strides = tuple(int(s) // 4 for s in np.ascontiguousarray(value).reshape(value.shape).strides)
        state[name] = tensor(Storage(str(k), value), value.shape, strides)
    return state


def write_zip(path, obj, short_storage=None):
    """torch >= 1.6's zip layout; short_storage: a key whose bytes are cut by 4."""
    data, storages = dumps(obj)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")
        for key, storage in storages.items():
            raw = storage.values.tobytes()
            z.writestr("archive/data/%s" % key, raw[:-4] if key == short_storage else raw)


def write_legacy(path, obj, replace=None):
    """torch < 1.6's layout: five pickles, then each storage. replace {index: object}: the
    object pickled in place of pickle number index (0 magic, 1 protocol, 2 system information,
    3 the object, 4 the storage keys)."""
    data, storages = dumps(obj)
    pickles = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2),
               pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2), data,
               pickle.dumps(sorted(storages), 2)]
    for index, payload in (replace or {}).items():
        pickles[index] = dumps(payload)[0]
    with open(path, "wb") as f:
        for part in pickles:
            f.write(part)
        for key in sorted(storages):
            storage = storages[key]
            f.write(struct.pack("<q", storage.numel))
            f.write(storage.values.tobytes())
