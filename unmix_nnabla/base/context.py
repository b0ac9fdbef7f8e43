"""NNabla contexts: which device runs the graphs, and, when a GPU cannot, why, in one line.

GPU contexts (`cuda`, `cudnn`) need NNabla's CUDA extension (nnabla-ext-cuda120 1.39.0) and
the CUDA 12 / cuDNN 8 libraries its `libnnabla_cuda-120_8.so` links: `CUDA_LIBRARIES`, from
NVIDIA's pip wheels (requirements-gpu.txt) or a conda environment, or from the system; and the
NVIDIA driver's libcuda.so.1 (a driver for CUDA 12: >= 525.60.13). `load_cuda_libraries`
prepares a process for the extension and `import_cuda_extension` imports it: every import of
the extension in the project goes through it.

For `mpirun` over GPUs the extension opens NCCL and Open MPI itself, once, at its import, and
registers its NCCL communicator only if it finds both: NCCL in `$NCCL_HOME/lib` or by name
through the dynamic loader, Open MPI's `libmpi.so` in `$OMPI_HOME/lib`, through the loader or
in a few system folders. `nccl_library()` and `mpi_library()` look where it looks;
`missing_for_multi_gpu()` names what it will not find, with the command that installs it.

`gpu_status()` tells whether a GPU is usable and, if not, the cause: the extension or a
library missing (and the command that installs it), no driver, a driver too old, no device,
a GPU the extension has no kernels for. `set_context` uses it: a GPU context asked for
explicitly that cannot be used is one UmxError with that line; without a request the CPU is
chosen, saying why.
"""
import contextlib
import ctypes
import glob
import importlib.metadata
import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile

import nnabla as nn
from nnabla.ext_utils import get_extension_context

from unmix_nnabla.base.console import warn
from unmix_nnabla.base.processes import mpi_world_size
from unmix_nnabla.base.runtime import UmxError

# the libraries libnnabla_cuda-120_8.so links (ldd), and NVIDIA's pip package of each
CUDA_LIBRARIES = (("libcudart.so.12", "nvidia-cuda-runtime-cu12"),
                  ("libcublas.so.12", "nvidia-cublas-cu12"),
                  ("libcusolver.so.11", "nvidia-cusolver-cu12"),
                  ("libcurand.so.10", "nvidia-curand-cu12"),
                  ("libcufft.so.11", "nvidia-cufft-cu12"),
                  ("libcudnn.so.8", "nvidia-cudnn-cu12 8.9 (cuDNN 8: cuDNN 9 lacks the RNN API "
                                    "NNabla's LSTM uses)"))
# what the wheels hold, in the order their dependencies need (cuDNN 8 opens its parts by name);
# never NCCL: NNabla opens it itself, and a global preload crashes its NCCL loader
WHEEL_LOAD_ORDER = ("libcudart.so.12", "libcublasLt.so.12", "libcublas.so.12",
                    "libnvJitLink.so.12", "libcusparse.so.12", "libcusolver.so.11",
                    "libcurand.so.10", "libcufft.so.11", "libcudnn_ops_infer.so.8",
                    "libcudnn_ops_train.so.8", "libcudnn_cnn_infer.so.8",
                    "libcudnn_cnn_train.so.8", "libcudnn_adv_infer.so.8",
                    "libcudnn_adv_train.so.8", "libcudnn.so.8")
DRIVER_LIBRARY = "libcuda.so.1"
MIN_DRIVER = "525.60.13"  # NVIDIA's minimum Linux driver for CUDA 12.x
INSTALL_GPU = "pip install -r requirements-gpu.txt (or: make setup GPU=1)"
GPU_CONTEXTS = ("cuda", "cudnn")

# how NNabla 1.39.0's CUDA extension looks for NCCL and Open MPI (its dl_nccl, dl_mpi)
NCCL_NAMES = ("libnccl.so", "libnccl.so.2")
MPI_NAME = "libmpi.so"
MPI_FOLDERS = ("/usr/lib64", "/usr/lib", "/opt/openmpi/lib")
MIN_NCCL = (2, 10, 3)
INSTALL_NCCL = ("pip install nvidia-nccl-cu12==2.18.1 (in requirements-gpu.txt; the project "
                "points NCCL_HOME at it), or conda install -c conda-forge nccl")
INSTALL_MPI = ("apt-get install -y libopenmpi-dev (NNabla opens the unversioned libmpi.so, "
               "which only Open MPI's -dev package holds), or conda install -c conda-forge "
               "openmpi")
# NNabla's notices on stderr, at the extension's import, when it did not find them
NCCL_NOTICE = "libnccl.so library is not found, distribution training feature is disabled."
MPI_NOTICE = "openmpi library is not found, distribution training feature is disabled."
# the compute capabilities nnabla-ext-cuda120 1.39.0 has kernels for: sm_53 to sm_90 (and
# compute_90 PTX, which newer GPUs compile at start-up)
KERNELS_FROM, KERNELS_TO = (5, 3), (9, 0)

_loaded = {}  # library name → the path it was loaded from
_said = set()  # the warnings gpu_status has given


def wheel_library_folders():
    """Where the CUDA libraries of this environment are: the `lib` folders of NVIDIA's pip
    wheels (site-packages/nvidia/*/lib on sys.path), and a conda environment's lib folder
    (conda-forge's CUDA packages, environment-gpu.yml)."""
    folders = []
    for entry in sys.path:
        folders += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib")))
    conda = os.environ.get("CONDA_PREFIX")
    if conda and os.path.isdir(os.path.join(conda, "lib")):
        folders.append(os.path.join(conda, "lib"))
    return folders


def _home_holding(names, subfolders):
    """The first folder F of the environment (`subfolders` of the wheels' site-packages, then a
    conda environment) whose F/lib holds one of `names`, or None."""
    homes = [os.path.join(entry, sub) for entry in sys.path for sub in subfolders]
    homes += [os.environ["CONDA_PREFIX"]] if os.environ.get("CONDA_PREFIX") else []
    for home in homes:
        if any(os.path.isfile(os.path.join(home, "lib", name)) for name in names):
            return home
    return None


def load_cuda_libraries():
    """Prepare this process for NNabla's CUDA extension, before it is imported
    (`import_cuda_extension` calls it): load the CUDA libraries that NVIDIA's wheels hold,
    globally, dependencies first, so that the extension (and cuDNN, which opens its parts by
    name) finds them loaded; point NNabla at NCCL, `NCCL_HOME` at the nvidia-nccl-cu12 wheel's
    folder or a conda environment (NNabla opens NCCL itself at import; it is never preloaded
    here: a global preload crashes NNabla's NCCL loader), and `OMPI_HOME` at a conda
    environment's Open MPI; and set `CUDA_MODULE_LOADING=LAZY` (CUDA 12.1's runtime otherwise
    loads every kernel of the 466 MB extension when a context is made). A variable the user set
    is left alone. → {library: path} of those loaded from the wheels (the others come from the
    system)."""
    for variable, home in (("NCCL_HOME", _home_holding(NCCL_NAMES, ["nvidia/nccl"])),
                           ("OMPI_HOME", _home_holding([MPI_NAME], []))):
        if home and variable not in os.environ:
            os.environ[variable] = home
    os.environ.setdefault("CUDA_MODULE_LOADING", "LAZY")
    paths = {}
    for folder in wheel_library_folders():
        for name in WHEEL_LOAD_ORDER:
            if os.path.isfile(os.path.join(folder, name)):
                paths.setdefault(name, os.path.join(folder, name))
    for name in WHEEL_LOAD_ORDER:
        if name in paths and name not in _loaded:
            try:
                ctypes.CDLL(paths[name], mode=ctypes.RTLD_GLOBAL)
                _loaded[name] = paths[name]
            except OSError:
                pass  # named by gpu_status when it matters
    return dict(_loaded)


def import_cuda_extension():
    """NNabla's CUDA extension (`nnabla_ext.cuda`), imported once as it must be: the process
    prepared (`load_cuda_libraries`); refused, in one line, after mpi4py's MPI (NNabla's MPI
    loader then crashes the process); NNabla's notices that NCCL or Open MPI is missing kept
    under mpirun, where they matter (and `missing_for_multi_gpu` names the remedy), dropped in
    a single process, where they do not."""
    if "nnabla_ext.cuda" in sys.modules:
        return sys.modules["nnabla_ext.cuda"]
    if "mpi4py.MPI" in sys.modules:
        raise UmxError("mpi4py's MPI was imported before NNabla's CUDA extension, whose MPI "
                       "loader would then crash the process: import the extension first "
                       "(unmix_nnabla.base.context.import_cuda_extension)")
    load_cuda_libraries()
    with _stderr_of_c_code() as printed, contextlib.redirect_stdout(io.StringIO()):
        import nnabla_ext.cuda as cuda  # its own notices on stdout are not ours either
    sys.stderr.write(unneeded_notices_dropped(printed.getvalue(), mpi_world_size() > 1))
    return cuda


def unneeded_notices_dropped(text, multi_process):
    """What the extension's import printed on stderr, without NNabla's NCCL and Open MPI
    notices unless this is a process of an mpirun job."""
    if multi_process:
        return text
    return "".join(line for line in text.splitlines(True)
                   if line.strip() not in (NCCL_NOTICE, MPI_NOTICE))


@contextlib.contextmanager
def _stderr_of_c_code():
    """Gather what is written to file descriptor 2 (C code's stderr, Python's too) in the block
    → a StringIO filled when the block ends."""
    printed = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield printed
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            printed.write(held.read().decode("utf-8", "replace"))


def _loader_finds(name):
    """The file that dlopen(name) opens, looked up as the dynamic loader does
    (LD_LIBRARY_PATH, its cache, the default folders), or None."""
    folders = [f for f in os.environ.get("LD_LIBRARY_PATH", "").split(":") if f]
    for folder in folders:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    cached = _loader_cache().get(name)
    if cached:
        return cached
    for folder in ("/lib", "/usr/lib", "/lib64", "/usr/lib64"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _loader_cache():
    """{library name: path} of the dynamic loader's cache (`ldconfig -p`), 64-bit entries."""
    for ldconfig in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout
        except OSError:
            continue
        return {m.group(1): m.group(2) for m in re.finditer(
            r"^\s*(\S+) \((?:[^)]*x86-64[^)]*)\) => (\S+)", out, re.M)}
    return {}


def nccl_library():
    """The file NNabla's CUDA extension will open as NCCL, looked for as it looks
    ($NCCL_HOME/lib, then by name through the loader), or None."""
    home = os.environ.get("NCCL_HOME")
    for name in NCCL_NAMES if home else ():
        if os.path.isfile(os.path.join(home, "lib", name)):
            return os.path.join(home, "lib", name)
    for name in NCCL_NAMES:
        found = _loader_finds(name)
        if found:
            return found
    return None


def mpi_library():
    """The file NNabla's CUDA extension will open as Open MPI, looked for as it looks
    ($OMPI_HOME/lib, by name through the loader, a few system folders), or None."""
    home = os.environ.get("OMPI_HOME")
    if home and os.path.isfile(os.path.join(home, "lib", MPI_NAME)):
        return os.path.join(home, "lib", MPI_NAME)
    found = _loader_finds(MPI_NAME)
    if found:
        return found
    for folder in MPI_FOLDERS:
        if os.path.isfile(os.path.join(folder, MPI_NAME)):
            return os.path.join(folder, MPI_NAME)
    return None


def nccl_version(path):
    """NCCL's version (major, minor, patch) from its file's full name (libnccl.so.2.18.1) or
    from the nvidia-nccl-cu12 wheel that holds it; None when neither says."""
    match = re.search(r"\.so\.(\d+)\.(\d+)\.(\d+)$", os.path.realpath(path))
    if match:
        return tuple(int(g) for g in match.groups())
    if os.sep + os.path.join("nvidia", "nccl", "lib") in path:
        try:
            return tuple(int(g) for g in re.findall(
                r"\d+", importlib.metadata.version("nvidia-nccl-cu12"))[:3])
        except Exception:
            return None
    return None


def missing_for_multi_gpu():
    """[one line per library NNabla's CUDA extension will not find, or find too old, for
    mpirun over GPUs, with the command that installs it]; [] when both are there."""
    missing = []
    nccl = nccl_library()
    if nccl is None:
        missing.append("NNabla will not find NCCL (%s in $NCCL_HOME/lib or the loader's path): "
                       "%s" % (" or ".join(NCCL_NAMES), INSTALL_NCCL))
    elif (nccl_version(nccl) or MIN_NCCL) < MIN_NCCL:
        missing.append("NCCL %s (%s) is older than NNabla needs (%s): %s" % (
            ".".join(map(str, nccl_version(nccl))), nccl, ".".join(map(str, MIN_NCCL)),
            INSTALL_NCCL))
    if mpi_library() is None:
        missing.append("NNabla will not find Open MPI (%s in $OMPI_HOME/lib, the loader's path "
                       "or %s): %s" % (MPI_NAME, ", ".join(MPI_FOLDERS), INSTALL_MPI))
    return missing


def nnabla_message(exc):
    """An exception of NNabla's C++ code as one line, whole: its lines joined by " / " (the
    first says where, the last what)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " / ".join(lines) or type(exc).__name__


def _loadable(name):
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def _driver():
    """(CUDA version the driver supports, e.g. 12020, [(major, minor) compute capability of
    each device]) from libcuda.so.1's own API; raises OSError without a driver. Devices: None
    when cuInit fails."""
    cuda = ctypes.CDLL(DRIVER_LIBRARY)
    version = ctypes.c_int(0)
    cuda.cuDriverGetVersion(ctypes.byref(version))
    if cuda.cuInit(0) != 0:
        return version.value, None
    count, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetCount(ctypes.byref(count))
    capabilities = []
    for device in range(count.value):
        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR (75), _MINOR (76)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)
        capabilities.append((major.value, minor.value))
    return version.value, capabilities


def gpu_count():
    """The GPUs the NVIDIA driver shows this process (0 without a driver)."""
    try:
        return len(_driver()[1] or [])
    except (OSError, AttributeError):
        return 0


def capability_verdict(capability, device_id=0):
    """(usable, None or one line) for a GPU of this compute capability (major, minor):
    below the extension's kernels, refused with the reason; above them, usable with a
    warning (run-time compilation)."""
    sm = "compute capability %d.%d (sm_%d%d)" % (capability + capability)
    kernels = "sm_%d%d to sm_%d%d" % (KERNELS_FROM + KERNELS_TO)
    if tuple(capability) < KERNELS_FROM:
        return False, ("GPU %d has %s: nnabla-ext-cuda120 1.39.0 has kernels for %s only "
                       "(Maxwell's sm_50/52 GPUs cannot run it)" % (device_id, sm, kernels))
    if tuple(capability) > KERNELS_TO:
        return True, ("GPU %d has %s, newer than nnabla-ext-cuda120's kernels (%s): CUDA "
                      "compiles them from PTX at start-up (minutes; cached), and NCCL's wheel "
                      "has no code for it" % (device_id, sm, kernels))
    return True, None


def gpu_status(device_id=0, runtime=True):
    """(True, what is there) when NNabla can run on GPU `device_id`, else (False, one line
    why). runtime: also ask the CUDA runtime for its devices (its first device call; the
    communicator's start makes its own)."""
    if importlib.util.find_spec("nnabla_ext") is None or \
            importlib.util.find_spec("nnabla_ext.cuda") is None:
        return False, "NNabla's CUDA extension is not installed: %s" % INSTALL_GPU
    load_cuda_libraries()
    missing = [(name, package) for name, package in CUDA_LIBRARIES if not _loadable(name)]
    if missing:
        return False, "%s not found (from %s): %s" % (
            ", ".join(name for name, _ in missing), ", ".join(p for _, p in missing), INSTALL_GPU)
    try:
        version, capabilities = _driver()
    except (OSError, AttributeError):
        return False, ("no NVIDIA driver (%s not found): install NVIDIA's driver >= %s for "
                       "CUDA 12" % (DRIVER_LIBRARY, MIN_DRIVER))
    if version < 12000:
        return False, ("the NVIDIA driver supports CUDA %d.%d, CUDA 12 needs a driver >= %s"
                       % (version // 1000, version % 1000 // 10, MIN_DRIVER))
    if not capabilities:
        return False, "no GPU: the NVIDIA driver sees no device"
    if device_id >= len(capabilities):
        return False, "no GPU %d: the NVIDIA driver sees %d" % (device_id, len(capabilities))
    usable, why = capability_verdict(capabilities[device_id], device_id)
    if not usable:
        return False, why
    try:
        cuda = import_cuda_extension()
        count = cuda.get_device_count() if runtime else len(capabilities)
    except ValueError as exc:  # the extension's list of GPUs it does not support
        return False, "this GPU is not supported by nnabla-ext-cuda120: %s" % \
            str(exc).splitlines()[0]
    except UmxError:
        raise
    except Exception as exc:
        return False, "NNabla's CUDA extension cannot start: %s" % nnabla_message(exc)
    if count < 1:
        return False, "no GPU: NNabla's CUDA extension sees no device"
    if why and why not in _said:
        _said.add(why)
        warn(why)
    return True, "%d GPU%s (CUDA driver %d.%d)" % (count, "s" if count > 1 else "",
                                                    version // 1000, version % 1000 // 10)


def gpu_available():
    return gpu_status()[0]


def set_context(name=None, device_id=0, verbose=True):
    """Set NNabla's default context → its name. name None: cudnn when a GPU is usable, else
    cpu (saying why); a GPU context asked for that cannot be used: one UmxError saying why."""
    if name in GPU_CONTEXTS or name is None:
        usable, why = gpu_status(int(device_id))
        if name is not None and not usable:
            raise UmxError("--context %s: %s" % (name, why))
        if name is None:
            name = "cudnn" if usable else "cpu"
            if verbose and not usable:
                print("context: cpu (%s)" % why)
                verbose = False
    if verbose:
        print("context: %s" % name)
    nn.set_default_context(get_extension_context(name, device_id=str(device_id)))
    return name


def ensure_context():
    """Set the context if none is set yet (a user's script calling the Python API): NNabla's
    own default names no array class, on which nothing runs."""
    if not nn.get_current_context().array_class:
        set_context(None, verbose=False)
