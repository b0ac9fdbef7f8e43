"""NNabla contexts: which device runs the graphs, and, when a GPU cannot, why, in one line.

GPU contexts (`cuda`, `cudnn`) need NNabla's CUDA extension (nnabla-ext-cuda120 1.39.0) and
the CUDA 12 / cuDNN 8 libraries its `libnnabla_cuda-120_8.so` links: `CUDA_LIBRARIES`, from
NVIDIA's pip wheels (requirements-gpu.txt), which `load_cuda_libraries` loads from the wheels'
folders before the extension is imported, as other frameworks do (no LD_LIBRARY_PATH needed),
or from the system; and the NVIDIA driver's libcuda.so.1 (a driver for CUDA 12: >= 525.60.13).

`gpu_status()` tells whether a GPU is usable and, if not, the cause: the extension or a
library missing (and the command that installs it), no driver, a driver too old, no device,
a GPU the extension does not support. `set_context` uses it: a GPU context asked for
explicitly that cannot be used is one UmxError with that line; without a request the CPU is
chosen, saying why.
"""
import contextlib
import ctypes
import glob
import io
import os
import sys

from unmix_nnabla.base.runtime import UmxError

# the libraries libnnabla_cuda-120_8.so links (ldd), and NVIDIA's pip package of each
CUDA_LIBRARIES = (("libcudart.so.12", "nvidia-cuda-runtime-cu12"),
                  ("libcublas.so.12", "nvidia-cublas-cu12"),
                  ("libcusolver.so.11", "nvidia-cusolver-cu12"),
                  ("libcurand.so.10", "nvidia-curand-cu12"),
                  ("libcufft.so.11", "nvidia-cufft-cu12"),
                  ("libcudnn.so.8", "nvidia-cudnn-cu12 8.9 (cuDNN 8: cuDNN 9 lacks the RNN API "
                                    "NNabla's LSTM uses)"))
# what the wheels hold, in the order their dependencies need (cuDNN 8 opens its parts by name)
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

_loaded = {}  # library name → the path it was loaded from


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


def load_cuda_libraries():
    """Load the CUDA libraries that NVIDIA's wheels hold, globally, dependencies first, so
    that the CUDA extension (and cuDNN, which opens its parts by name) finds them loaded.
    → {library: path} of those loaded from the wheels (the others come from the system)."""
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


def _loadable(name):
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def _driver():
    """(CUDA version the driver supports, e.g. 12020, number of devices) from libcuda.so.1's
    own API; raises OSError without a driver. Devices: None when cuInit fails."""
    cuda = ctypes.CDLL(DRIVER_LIBRARY)
    version = ctypes.c_int(0)
    cuda.cuDriverGetVersion(ctypes.byref(version))
    if cuda.cuInit(0) != 0:
        return version.value, None
    count = ctypes.c_int(0)
    cuda.cuDeviceGetCount(ctypes.byref(count))
    return version.value, count.value


def gpu_status():
    """(True, what is there) when NNabla can run on a GPU, else (False, one line why)."""
    import importlib.util
    if importlib.util.find_spec("nnabla_ext") is None or \
            importlib.util.find_spec("nnabla_ext.cuda") is None:
        return False, "NNabla's CUDA extension is not installed: %s" % INSTALL_GPU
    load_cuda_libraries()
    missing = [(name, package) for name, package in CUDA_LIBRARIES if not _loadable(name)]
    if missing:
        return False, "%s not found (from %s): %s" % (
            ", ".join(name for name, _ in missing), ", ".join(p for _, p in missing), INSTALL_GPU)
    try:
        version, devices = _driver()
    except (OSError, AttributeError):
        return False, ("no NVIDIA driver (%s not found): install NVIDIA's driver >= %s for "
                       "CUDA 12" % (DRIVER_LIBRARY, MIN_DRIVER))
    if version < 12000:
        return False, ("the NVIDIA driver supports CUDA %d.%d, CUDA 12 needs a driver >= %s"
                       % (version // 1000, version % 1000 // 10, MIN_DRIVER))
    if not devices:
        return False, "no GPU: the NVIDIA driver sees no device"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its own notices are not ours
            import nnabla_ext.cuda as cuda
            count = cuda.get_device_count()
    except ValueError as exc:  # the extension's list of GPUs it does not support
        return False, "this GPU is not supported by nnabla-ext-cuda120: %s" % \
            str(exc).splitlines()[0]
    except Exception as exc:
        return False, "NNabla's CUDA extension cannot start: %s" % str(exc).strip().splitlines()[0]
    if count < 1:
        return False, "no GPU: NNabla's CUDA extension sees no device"
    return True, "%d GPU%s (CUDA driver %d.%d)" % (count, "s" if count > 1 else "",
                                                    version // 1000, version % 1000 // 10)


def gpu_available():
    return gpu_status()[0]


def set_context(name=None, device_id=0, verbose=True):
    """Set NNabla's default context → its name. name None: cudnn when a GPU is usable, else
    cpu (saying why); a GPU context asked for that cannot be used: one UmxError saying why."""
    import nnabla as nn
    from nnabla.ext_utils import get_extension_context
    if name in GPU_CONTEXTS or name is None:
        usable, why = gpu_status()
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
    import nnabla as nn
    if not nn.get_current_context().array_class:
        set_context(None, verbose=False)
