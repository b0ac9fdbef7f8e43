"""Files written safely: unlinked temporary array files, write-then-rename paths, staging
folders published all or nothing, and output folder checks."""
import json
import os
import tempfile
from contextlib import contextmanager

import numpy as np

from runtime import UmxError


class TemporaryArrayFile:
    """An unlinked temporary file that arrays are written to (pwrite) and read back from
    (pread) by byte offset; forked processes share it. It lies in tempfile's folder (TMPDIR,
    or `folder`) and is gone once closed."""

    def __init__(self, prefix, folder=None):
        self.folder = folder or tempfile.gettempdir()
        self.file = tempfile.TemporaryFile(prefix=prefix, dir=folder)

    def write_at(self, array, offset):
        data = np.ascontiguousarray(array, np.float32)
        if os.pwrite(self.file.fileno(), data, offset) != data.nbytes:
            raise UmxError("could not write to a temporary file in %s (disk full?)" % self.folder)

    def read_into(self, out, offset):
        """Fill the array `out` with the file's bytes from `offset` on."""
        view, done = memoryview(out).cast("B"), 0
        while done < len(view):  # one pread hands out at most ~2 GB
            raw = os.pread(self.file.fileno(), len(view) - done, offset + done)
            if not raw:
                raise UmxError("a temporary file was cut short")
            view[done:done + len(raw)] = raw
            done += len(raw)

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_out_dir(out_dir):
    """Create `out_dir` or fail with UmxError when it cannot be written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise UmxError("cannot write to --out-dir %s: %s" % (out_dir, exc.strerror or exc))


@contextmanager
def staged_folder(folder):
    """Yield a temporary folder beside `folder`; if the block succeeds, move its files into
    `folder` (created if needed). A failure leaves `folder` as it was: all or nothing."""
    import shutil
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        yield staging
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json_atomic(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
