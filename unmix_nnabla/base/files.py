"""Files written safely, one mechanism each:

- `output_folder`: an output folder checked before any work (not a file, writable), created if
  needed, held by this run alone (an exclusive lock; a second run into it stops at once, naming
  the first; the kernel drops the lock when a run dies, so a killed run never blocks), and
  removed again if the run fails before publishing anything into it;
- `staged_folder` / `atomic_path`: write into a staging folder or a temporary file in the
  destination's folder, then rename: a reader never sees half-written files. A staging entry
  (`.tmp-umx-...`) is locked (flock) by its writer while it lives; the kernel drops the lock
  when the writer dies, however it dies, so the next writer into the same folder removes what
  a killed run left (`remove_stale_staging`) and leaves a live run's staging alone;
- `writing_into`: a write that fails (full disk, no permission) becomes one UmxError naming
  the folder;
- `refuse_overlaps`: outputs never replace inputs, and two outputs never share a path;
- `write_manifest` / `verify_manifest`: a folder's files with their sizes and SHA-256,
  written last; nothing is trusted before it verifies;
- `TemporaryArrayFile`: an unlinked temporary file for arrays too large for memory.
"""
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager

import numpy as np

from unmix_nnabla.base.runtime import UmxError

STAGING = ".tmp-umx-"
MANIFEST = "MANIFEST.json"


# --------------------------------------------------------------------------------------
# failures while writing
# --------------------------------------------------------------------------------------

class WriteError(UmxError):
    """A write into a folder failed (full disk, no permission): no problem of one input."""


def write_failure(folder, exc):
    """One line for a failed write into `folder` (disk full, permissions, ...), naming the
    user's folder rather than a staging folder in it."""
    while os.path.basename(os.path.normpath(folder)).startswith(STAGING):
        folder = os.path.dirname(os.path.normpath(folder))
    code = getattr(exc, "errno", None)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 2 ** 20):
        return "no space left on the device of %s" % folder
    reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0] or type(exc).__name__
    return "cannot write to %s: %s" % (folder, reason)


@contextmanager
def writing_into(folder):
    """Wrap writes into `folder`: an OSError or a writer's RuntimeError (soundfile's
    LibsndfileError) becomes one UmxError naming the folder. Wrap only the writing calls, so
    that other errors keep their own message."""
    try:
        yield
    except UmxError:
        raise
    except (OSError, RuntimeError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise WriteError(write_failure(folder, exc)) from None


# --------------------------------------------------------------------------------------
# output folders, staging, atomic files
# --------------------------------------------------------------------------------------

_NEW = STAGING + "new-"  # being created, not yet locked: `<_NEW><pid>@<host>-<random>`
_HOST = socket.gethostname()
_LOCKS = {}  # staging path → the descriptor holding its lock
_HELD = {}  # real path of a folder this process has locked → [descriptor, depth]


def _forget_locks_in_child():
    """In a forked child: close the inherited descriptors of the parent's locks (staging
    folders, output folders). A flock belongs to the open descriptor, which a fork shares: a
    child that kept it would hold the parent's locks after the parent died, and the next run
    would take a dead run's staging for a live one's."""
    for fd in list(_LOCKS.values()) + [held[0] for held in _HELD.values()]:
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCKS.clear()
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def _new_staging(folder):
    """Create a staging folder in `folder`, locked by this process, and return its path. It
    is created under a name that names its creator (`_NEW`), locked, then renamed, so that no
    other process ever sees it unlocked under its final name; one left by a creator killed
    in between is removed once that process is gone (`remove_stale_staging`)."""
    tmp = tempfile.mkdtemp(prefix="%s%d@%s-" % (_NEW, os.getpid(), _HOST), dir=folder)
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = os.path.join(folder, STAGING + os.path.basename(tmp)[len(_NEW):])
    os.rename(tmp, path)
    _LOCKS[path] = fd
    _owner_permissions(path)
    return path


def _release(path):
    """Remove a staging folder (if still there) and drop its lock."""
    shutil.rmtree(path, ignore_errors=True)
    fd = _LOCKS.pop(path, None)
    if fd is not None:
        os.close(fd)


def _published(path):
    """A staging folder that was renamed into place: keep it, drop its lock."""
    fd = _LOCKS.pop(path, None)
    if fd is not None:
        os.close(fd)


def remove_stale_staging(folder):
    """Remove the staging entries in `folder` whose writer is gone (their lock is free)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        if name.startswith(_NEW):
            if _creator_gone(name):
                shutil.rmtree(path, ignore_errors=True)
            continue
        if not name.startswith(STAGING) or path in _LOCKS:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a live writer holds it
            continue
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def _creator_gone(name):
    """Whether the process that began creating the staging entry `name` (`_NEW`) is gone: a
    process of this host, no longer running (or a zombie). Another host's, or a name of
    another form, counts as alive: it is left alone."""
    creator, _, rest = name[len(_NEW):].partition("@")
    host = rest.rpartition("-")[0]
    if not creator.isdigit() or host != _HOST:
        return False
    try:
        os.kill(int(creator), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's)
    try:  # killed but not yet reaped by its parent: gone too
        with open("/proc/%s/stat" % creator) as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def check_not_a_file(path, flag):
    """An output folder argument must not name an existing file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UmxError("%s %s is a file, not a folder" % (flag, path))


@contextmanager
def output_folder(path, flag):
    """Check, create, lock and clean an output folder (named by its CLI flag for the messages).

    Before the work: `path` must not be a file and must be writable (created if missing,
    stale staging removed), and no other run may be writing into it (`locked_folder`). If the
    block fails, the folders created here are removed again while they are empty: a failed run
    leaves nothing behind.
    """
    check_not_a_file(path, flag)
    created = _missing_folders(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        _remove_empty(created)
        raise UmxError("cannot write to %s %s: %s" % (flag, path, exc.strerror or exc)) from None
    try:
        with locked_folder(path, flag):
            remove_stale_staging(path)
            yield path
    except BaseException:
        _remove_empty(created)
        raise


@contextmanager
def removed_on_failure(path):
    """For a block that may create the folder `path` (and its missing parents): if the block
    fails, the folders it created are removed again while they are empty."""
    created = _missing_folders(path)
    try:
        yield path
    except BaseException:
        _remove_empty(created)
        raise


def _missing_folders(path):
    """The folders that creating `path` would create, innermost first."""
    created, head = [], os.path.abspath(path)
    while not os.path.exists(head):
        created.append(head)
        head = os.path.dirname(head)
    return created




@contextmanager
def locked_folder(path, flag):
    """Hold an exclusive lock (flock) on the folder `path` for the block: one run at a time
    writes into an output folder. Another run's lock is one UmxError naming that run; a dead
    run's lock is gone with it (the kernel drops it). Re-entrant within this process."""
    real = os.path.realpath(path)
    if real in _HELD:
        _HELD[real][1] += 1
    else:
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UmxError("%s %s is being written by another run%s: wait for it to end, or "
                           "choose another folder" % (flag, path, _lock_holder(real))) from None
        _HELD[real] = [fd, 1]
    try:
        yield path
    finally:
        _HELD[real][1] -= 1
        if not _HELD[real][1]:
            os.close(_HELD.pop(real)[0])


def _lock_holder(path):
    """' (pid N: its command line)' of the process holding the flock on `path`, from
    /proc/locks, or '' when it cannot be told."""
    try:
        stat = os.stat(path)
        device = "%02x:%02x:%d" % (os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino)
        with open("/proc/locks") as f:
            pids = [line.split()[4] for line in f
                    if "FLOCK" in line and line.split()[5] == device]
        with open("/proc/%s/cmdline" % pids[0], "rb") as f:
            command = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())
        return " (pid %s: %s)" % (pids[0], command[:200])
    except (OSError, IndexError, ValueError):
        return ""


def _remove_empty(folders):
    """Remove the folders (innermost first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _owner_permissions(path):
    """mkdtemp creates 0700: give what a plain mkdir would (umask applied), so that a folder
    published by renaming it (a checkpoint) has the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


@contextmanager
def atomic_path(path):
    """Yield a temporary path (in a staging folder beside `path`) to write; it is renamed to
    `path` only if the block succeeds. A failed write becomes one UmxError naming the folder.
    (The lock is on the staging folder: writers such as HDF5 lock their own file.)"""
    folder = os.path.dirname(os.path.abspath(path))
    with writing_into(folder):
        remove_stale_staging(folder)
        staging = _new_staging(folder)
    tmp = os.path.join(staging, os.path.basename(path))
    try:
        with writing_into(folder):
            yield tmp
            os.replace(tmp, path)
    finally:
        _release(staging)


@contextmanager
def staged_folder(folder, staging_root=None):
    """Yield an empty staging folder; if the block succeeds, move its files into `folder`
    (created if needed). A failure leaves `folder` as it was: all or nothing (the folders
    created for the staging are removed again while empty).

    The staging folder lies in `staging_root` (default: `folder` itself), on the
    destination's filesystem, so that publishing is a rename.
    """
    root = staging_root or folder
    created = _missing_folders(root)
    with writing_into(root):
        os.makedirs(root, exist_ok=True)
        remove_stale_staging(root)
        staging = _new_staging(root)
    try:
        yield staging
        with writing_into(folder):
            os.makedirs(folder, exist_ok=True)
            for name in os.listdir(staging):
                os.replace(os.path.join(staging, name), os.path.join(folder, name))
    except BaseException:
        _release(staging)
        _remove_empty(created)
        raise
    _release(staging)


@contextmanager
def replaced_folder(folder):
    """Yield an empty staging folder beside `folder`; if the block succeeds, write its
    manifest (last) and put it in place of `folder` with two renames. Until the second rename
    the previous version stays complete as `folder.old` (`current_or_old` finds it)."""
    parent = os.path.dirname(os.path.abspath(folder))
    with writing_into(parent):
        remove_stale_staging(parent)
        staging = _new_staging(parent)
    try:
        yield staging
        write_manifest(staging)
        old = folder + ".old"
        with writing_into(parent):
            if os.path.isdir(folder):
                shutil.rmtree(old, ignore_errors=True)
                os.replace(folder, old)
            os.replace(staging, folder)
        _published(staging)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        _release(staging)


def current_or_old(folder):
    """`folder`, or `folder.old` when a kill fell between `replaced_folder`'s two renames,
    or None. (A damaged `folder` is not replaced by its old copy: the caller verifies it.)"""
    if os.path.isdir(folder):
        return folder
    if os.path.isdir(folder + ".old"):
        return folder + ".old"
    return None


def write_json_atomic(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)


def read_json(path, what):
    """A JSON file's content, or one UmxError naming the file (`what`: what it should be)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise UmxError("%s is not a readable %s (%s)" % (path, what, getattr(exc, "strerror", None)
                                                        or str(exc).splitlines()[0])) from None


# --------------------------------------------------------------------------------------
# inputs and outputs never overlap
# --------------------------------------------------------------------------------------

def refuse_overlaps(inputs, outputs):
    """Refuse, before any work, an output that would replace an input or another output.

    inputs: [(path, what)] the files read (what: e.g. "the input (--inputs)");
    outputs: [(path, owner)] the files to be written (owner: what writes it, e.g. the input
    whose stem it is). Paths are compared after resolving links.
    """
    read = {}
    for path, what in inputs:
        read.setdefault(os.path.realpath(path), (path, what))
    written = {}
    for path, owner in outputs:
        real = os.path.realpath(path)
        if real in read:
            source, what = read[real]
            raise UmxError("%s would replace %s %s: choose another output folder"
                           % (path, what, source))
        if real in written and written[real][1] != owner:
            raise UmxError("%s and %s would both write %s: rename one, or run them separately"
                           % (written[real][1], owner, path))
        written[real] = (path, owner)


# --------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------

def sha256_of(path):
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder):
    """Write `folder`/MANIFEST.json (each file's size and SHA-256), atomically, last."""
    entries = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name != MANIFEST and os.path.isfile(path) and not name.startswith(STAGING):
            entries[name] = {"size": os.path.getsize(path), "sha256": sha256_of(path)}
    write_json_atomic(os.path.join(folder, MANIFEST), {"files": entries})


def verify_manifest(folder, advice):
    """Raise one UmxError (ending with `advice`: how to proceed) unless every file that
    `folder`'s manifest lists is there with its size and checksum."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise UmxError("%s is incomplete (no %s: written last, so the run that wrote it did "
                       "not finish it): %s" % (folder, MANIFEST, advice))
    try:
        with open(path) as f:
            entries = json.load(f)["files"]
        items = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in entries.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UmxError("%s is damaged (unreadable %s): %s" % (folder, MANIFEST, advice)) from None
    for name, size, digest in items:
        file_path = os.path.join(folder, name)
        if not os.path.isfile(file_path):
            raise UmxError("%s is incomplete (%s is missing): %s" % (folder, name, advice))
        if os.path.getsize(file_path) != size or sha256_of(file_path) != digest:
            raise UmxError("%s is damaged (%s does not match its checksum): %s"
                           % (folder, name, advice))


# --------------------------------------------------------------------------------------
# arrays too large for memory
# --------------------------------------------------------------------------------------

class TemporaryArrayFile:
    """An unlinked temporary file that arrays are written to (pwrite) and read back from
    (pread) by byte offset; forked processes share it. It lies in tempfile's folder (TMPDIR,
    or `folder`) and is gone once closed."""

    def __init__(self, prefix, folder=None):
        self.folder = folder or tempfile.gettempdir()
        with writing_into(self.folder):
            self.file = tempfile.TemporaryFile(prefix=prefix, dir=self.folder)

    def write_at(self, array, offset):
        data = np.ascontiguousarray(array, np.float32)
        with writing_into(self.folder):
            written = os.pwrite(self.file.fileno(), data, offset)
        if written != data.nbytes:
            raise WriteError(write_failure(self.folder, OSError(errno.ENOSPC, "short write")))

    def read_into(self, out, offset):
        """Fill the array `out` with the file's bytes from `offset` on."""
        view, done = memoryview(out).cast("B"), 0
        while done < len(view):  # one pread hands out at most ~2 GB
            raw = os.pread(self.file.fileno(), len(view) - done, offset + done)
            if not raw:
                raise UmxError("a temporary file in %s was cut short" % self.folder)
            view[done:done + len(raw)] = raw
            done += len(raw)

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
