"""How a GPU run starts, tested on the CPU: where NNabla's CUDA extension will find NCCL and Open
MPI (and the line naming the one it will not find), the preparation before the extension's
import (NCCL_HOME at the wheel, never a preload; lazy module loading), the import-order guard,
NNabla's notices kept only under mpirun, the compute-capability rule, the communicator's
start-up messages fed NNabla's own texts, and no forked workers on GPU contexts.
`make gpu-env-check` runs the same code against NNabla's real start-up on a stand-in driver."""
import functools
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import SMALL, make_random_weights, music_like
from unmix_nnabla.base import context
from unmix_nnabla.base.runtime import UmxError

# NNabla 1.39.0's own texts (from a run of its real start-up on the stand-in driver)
NO_COMMUNICATOR = ("value error in query\n/hd/1/gitlab-runner/VYTfczLe/0/ml/nnabla/builders/all/"
                   "nnabla/include/nbla/function_registry.hpp:70\nFailed `it != items_.end()`: "
                   "Any of [cudnn:float, cuda:float, cpu:float] could not be found in []\n")
NO_DRIVER = ("target_specific error in cuda_get_device_count\n/hd/1/gitlab-runner/VYTfczLe/0/ml/"
             "nnabla/builders/all/nnabla-ext-cuda/src/nbla/cuda/init.cpp:1725\n"
             "(cudaGetDeviceCount(&count)) failed with \"CUDA driver version is insufficient "
             "for CUDA runtime version\" (cudaErrorInsufficientDriver).\n")


@pytest.fixture
def bare_machine(monkeypatch, tmp_path):
    """No NCCL or Open MPI anywhere NNabla looks: no homes, an empty loader path and cache,
    system folders that do not exist."""
    for variable in ("NCCL_HOME", "OMPI_HOME", "CONDA_PREFIX", "CUDA_MODULE_LOADING"):
        monkeypatch.setenv(variable, "")  # recorded, so that what the code sets is undone
        monkeypatch.delenv(variable)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path / "nothing"))
    monkeypatch.setattr(context, "_loader_cache", lambda: {})
    monkeypatch.setattr(context, "MPI_FOLDERS", (str(tmp_path / "nothing"),))
    real_isfile = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda path: real_isfile(path) and not any(
        path.startswith(d) for d in ("/lib/", "/usr/lib/", "/lib64/", "/usr/lib64/")))
    return tmp_path


def _library(folder, name, target=None):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    if target:
        open(os.path.join(folder, target), "wb").close()
        os.symlink(target, path)
    else:
        open(path, "wb").close()
    return path


def test_nccl_and_mpi_are_looked_for_where_nnabla_looks(bare_machine, monkeypatch):
    tmp = bare_machine
    assert context.nccl_library() is None and context.mpi_library() is None
    missing = context.missing_for_multi_gpu()
    assert len(missing) == 2
    assert missing[0].startswith("NNabla will not find NCCL (libnccl.so or libnccl.so.2 in "
                                 "$NCCL_HOME/lib or the loader's path): pip install "
                                 "nvidia-nccl-cu12==2.18.1")
    assert missing[1].startswith("NNabla will not find Open MPI (libmpi.so in $OMPI_HOME/lib")
    assert "apt-get install -y libopenmpi-dev" in missing[1]
    # Open MPI's runtime package alone: only the versioned libmpi.so.40, which NNabla never opens
    monkeypatch.setattr(context, "_loader_cache", lambda: {
        "libmpi.so.40": _library(str(tmp / "sys"), "libmpi.so.40")})
    assert context.mpi_library() is None
    # the -dev package's libmpi.so in the loader's cache; NCCL through $NCCL_HOME (the wheel's
    # file is libnccl.so.2 alone)
    mpi = _library(str(tmp / "sys"), "libmpi.so")
    monkeypatch.setattr(context, "_loader_cache", lambda: {"libmpi.so": mpi})
    nccl = _library(str(tmp / "wheel" / "lib"), "libnccl.so.2")
    monkeypatch.setenv("NCCL_HOME", str(tmp / "wheel"))
    assert context.mpi_library() == mpi and context.nccl_library() == nccl
    assert context.missing_for_multi_gpu() == []
    # $OMPI_HOME first; NCCL by name on LD_LIBRARY_PATH; an NCCL older than NNabla's 2.10.3
    home_mpi = _library(str(tmp / "ompi" / "lib"), "libmpi.so")
    monkeypatch.setenv("OMPI_HOME", str(tmp / "ompi"))
    monkeypatch.delenv("NCCL_HOME")
    old = _library(str(tmp / "ld"), "libnccl.so.2", target="libnccl.so.2.9.9")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp / "ld"))
    assert context.mpi_library() == home_mpi and context.nccl_library() == old
    assert context.missing_for_multi_gpu() == [
        "NCCL 2.9.9 (%s) is older than NNabla needs (2.10.3): %s" % (old, context.INSTALL_NCCL)]


def test_preparing_points_nnabla_at_the_nccl_wheel_and_never_loads_it(bare_machine, monkeypatch):
    """NCCL_HOME → the nvidia-nccl-cu12 wheel's folder on sys.path (a user's NCCL_HOME wins);
    NCCL itself is not loaded (a global preload crashes NNabla's NCCL loader);
    CUDA_MODULE_LOADING=LAZY unless the user chose."""
    tmp = bare_machine
    site = tmp / "site"
    nccl = _library(str(site / "nvidia" / "nccl" / "lib"), "libnccl.so.2")
    monkeypatch.syspath_prepend(str(site))
    context.load_cuda_libraries()
    assert os.environ["NCCL_HOME"] == str(site / "nvidia" / "nccl")
    assert os.environ["CUDA_MODULE_LOADING"] == "LAZY"
    assert context.nccl_library() == nccl
    assert not any("libnccl" in name for name in context.WHEEL_LOAD_ORDER)
    with open("/proc/self/maps") as maps:
        assert nccl not in maps.read()
    monkeypatch.setenv("NCCL_HOME", "/opt/my-nccl")
    monkeypatch.setenv("CUDA_MODULE_LOADING", "EAGER")
    context.load_cuda_libraries()
    assert os.environ["NCCL_HOME"] == "/opt/my-nccl"
    assert os.environ["CUDA_MODULE_LOADING"] == "EAGER"


def test_the_extension_is_never_imported_after_mpi4py(monkeypatch):
    """mpi4py's MPI imported first: one line, no import (NNabla's MPI loader would crash)."""
    monkeypatch.delitem(sys.modules, "nnabla_ext.cuda", raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", SimpleNamespace())
    with pytest.raises(UmxError) as info:
        context.import_cuda_extension()
    message = str(info.value)
    assert message.startswith("mpi4py's MPI was imported before NNabla's CUDA extension")
    assert "\n" not in message and "import_cuda_extension" in message


def test_nnabla_notices_are_kept_only_under_mpirun():
    printed = "2026 [nnabla][INFO]: Initializing CUDA extension...\n%s\n%s\nsomething else\n" % (
        context.NCCL_NOTICE, context.MPI_NOTICE)
    assert context.unneeded_notices_dropped(printed, multi_process=False) == \
        "2026 [nnabla][INFO]: Initializing CUDA extension...\nsomething else\n"
    assert context.unneeded_notices_dropped(printed, multi_process=True) == printed


def test_what_c_code_prints_on_stderr_is_gathered(capfd):
    with context._stderr_of_c_code() as printed:
        os.write(2, (context.NCCL_NOTICE + "\n").encode())  # as NNabla's fprintf(stderr)
    assert printed.getvalue() == context.NCCL_NOTICE + "\n"
    assert capfd.readouterr().err == ""
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


@pytest.mark.parametrize("capability, usable, warned", [
    ((5, 0), False, None), ((5, 2), False, None), ((5, 3), True, False), ((7, 5), True, False),
    ((8, 6), True, False), ((9, 0), True, False), ((10, 0), True, True), ((12, 0), True, True)])
def test_compute_capability_rule(capability, usable, warned):
    ok, line = context.capability_verdict(capability, 1)
    assert ok == usable
    if not usable:
        assert line.startswith("GPU 1 has compute capability %d.%d (sm_%d%d): nnabla-ext-cuda120 "
                               "1.39.0 has kernels for sm_53 to sm_90 only" % (capability * 2))
    else:
        assert (line is not None) == warned
        if warned:
            assert "newer than nnabla-ext-cuda120's kernels (sm_53 to sm_90): CUDA compiles " \
                "them from PTX" in line


def test_a_newer_gpu_is_used_with_one_warning(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name.startswith("nnabla_ext") else real(name, *a))
    monkeypatch.setattr(context, "load_cuda_libraries", lambda: {})
    monkeypatch.setattr(context, "_loadable", lambda name: True)
    monkeypatch.setattr(context, "_driver", lambda: (12080, [(8, 0), (12, 0)]))
    monkeypatch.setattr(context, "import_cuda_extension",
                        lambda: SimpleNamespace(get_device_count=lambda: 2))
    monkeypatch.setattr(context, "_said", set())
    assert context.gpu_status(0) == (True, "2 GPUs (CUDA driver 12.8)")
    assert capsys.readouterr().err == ""
    for _ in range(2):
        assert context.gpu_status(1) == (True, "2 GPUs (CUDA driver 12.8)")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: GPU 1 has compute capability 12.0")
    assert context.gpu_status(2) == (False, "no GPU 2: the NVIDIA driver sees 2")


class _Communicator:
    """NNabla's MultiProcessDataParallelCommunicator as far as start-up goes: its init fails
    with NNabla's text for a machine whose driver cannot run the CUDA runtime."""
    name = "MultiProcessDataParallelCommunicatorNccl"

    def __init__(self, ctx):
        self.ctx = ctx

    def init(self):
        raise RuntimeError(NO_DRIVER)


def test_the_communicators_start_up_failures_name_the_cause(monkeypatch):
    from unmix_nnabla.training.comm import NcclCommunicator
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0")
    start = functools.partial(NcclCommunicator, "cudnn", status=lambda: (True, "2 GPUs"),
                              device_count=lambda: 2,
                              extension_context=lambda name, device_id: (name, device_id))
    # the pre-check: the missing library and the command that installs it, before NNabla
    line = "NNabla will not find NCCL (libnccl.so or libnccl.so.2 in $NCCL_HOME/lib or the " \
        "loader's path): " + context.INSTALL_NCCL
    with pytest.raises(UmxError) as info:
        start(missing=lambda: [line], communicators=None)
    assert str(info.value) == "mpirun with --context cudnn: " + line
    # NNabla registered no communicator: its message whole, on one line
    none = SimpleNamespace(MultiProcessDataParallelCommunicator=lambda ctx: (_ for _ in ()).throw(
        RuntimeError(NO_COMMUNICATOR)))
    with pytest.raises(UmxError) as info:
        start(missing=lambda: [], communicators=none)
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        "mpirun with --context cudnn: NNabla has no NCCL communicator for this context (it "
        "registers one when it finds NCCL and Open MPI at import): value error in query / ")
    assert message.endswith("Any of [cudnn:float, cuda:float, cpu:float] could not be found in []")
    # created, then the first device call fails: NNabla's message whole
    with pytest.raises(UmxError) as info:
        start(missing=lambda: [], communicators=SimpleNamespace(
            MultiProcessDataParallelCommunicator=_Communicator))
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        "mpirun with --context cudnn: NNabla's MultiProcessDataParallelCommunicatorNccl did not "
        "start: target_specific error in cuda_get_device_count / ")
    assert message.endswith("(cudaErrorInsufficientDriver).")


def test_gpu_contexts_never_fork_workers(monkeypatch, capsys, tmp_path):
    """-j N (and the automatic choice) on a GPU context: one process, one line saying so, for
    the Python API too; the stems are those of one process."""
    from unmix_nnabla.separation import separator
    monkeypatch.setattr(separator, "_SAID_ONE_PROCESS", set())
    assert separator.worker_plan(8, 1, jobs=3, cores=4)[0] == 3  # the CPU: as asked
    monkeypatch.setattr(separator, "on_cpu", lambda: False)
    assert separator.worker_plan(8, 1, jobs=3, cores=4) == (1, 4)
    assert separator.worker_plan(8, 1, jobs=None, cores=4) == (1, 4)
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: -j 3: a GPU context runs the network in one process (CUDA cannot "
                   "be used in forked workers)"]
    forks = []
    monkeypatch.setattr(separator, "worker_pool", lambda *a, **k: forks.append(a))
    make_random_weights(str(tmp_path / "m"), ["vocals", "drums"], **SMALL)
    from unmix_nnabla import load_models, separate
    cfgs = load_models(str(tmp_path / "m"))
    audio = music_like(3, 8000, seed=2)
    on_gpu, _ = separate(audio, 8000, cfgs, processes=2, progress=False)
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning")] == [
        "warning: -j 2: a GPU context runs the network in one process (CUDA cannot be used in "
        "forked workers)"]
    assert forks == []
    monkeypatch.setattr(separator, "on_cpu", lambda: True)
    one, _ = separate(audio, 8000, cfgs, processes=1, progress=False)
    for target in one:
        assert np.array_equal(on_gpu[target], one[target])


def test_a_conda_environments_nccl_and_open_mpi_are_found_as_the_wheels_are(bare_machine,
                                                                            monkeypatch):
    """environment-gpu.yml: conda-forge's nccl and openmpi in $CONDA_PREFIX/lib; NNabla is
    pointed at them (NCCL_HOME, OMPI_HOME)."""
    prefix = bare_machine / "conda"
    nccl = _library(str(prefix / "lib"), "libnccl.so", target="libnccl.so.2.21.5")
    mpi = _library(str(prefix / "lib"), "libmpi.so")
    monkeypatch.setenv("CONDA_PREFIX", str(prefix))
    context.load_cuda_libraries()
    assert os.environ["NCCL_HOME"] == os.environ["OMPI_HOME"] == str(prefix)
    assert context.nccl_library() == nccl and context.mpi_library() == mpi
    assert context.nccl_version(nccl) == (2, 21, 5)
    assert context.missing_for_multi_gpu() == []


def test_the_nccl_communicators_abort_ends_the_process():
    """A failing rank ends the job (train.py's on_error): here, without mpirun, the process,
    with the code given."""
    import subprocess
    code = ("from unmix_nnabla.training.comm import NcclCommunicator\n"
            "NcclCommunicator.__new__(NcclCommunicator).abort(3)\n"
            "print('still here')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 3 and "still here" not in proc.stdout, proc.stderr
