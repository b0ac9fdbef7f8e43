"""Prove, on a machine without a GPU, that the GPU environment loads and that `mpirun` over
GPUs starts: `make gpu-env-check`.

Run in a venv with requirements.txt and requirements-gpu.txt installed (the make target makes
one apart, .venv-gpu-check). It prints:
1. for every shared library that NNabla's CUDA extension (libnnabla_cuda-120_8.so) links,
   where it is found: in NVIDIA's pip wheels (loaded by context.load_cuda_libraries, no
   LD_LIBRARY_PATH), in NNabla's own package, or on the system; all must resolve but the
   driver's libcuda.so.1;
2. NNabla's real start-up (`init_cuda()`, at the extension's import, through the project's
   `context.import_cuda_extension`) on a stand-in driver: libcuda.so.1 and libnvidia-ml.so.1
   built here with gcc from tools/standin/ (a few functions that return success; two GPUs):
   where NNabla finds NCCL and Open MPI, that it registered its NCCL communicator, the
   compute-capability rule, and the first device call failing, as it must without a GPU;
3. `mpirun -n 2` on the stand-in: each rank's project communicator (`comm.get_communicator`)
   creates NNabla's NCCL communicator on its GPU, whose start (a device call) then fails.
Exit 0 when the libraries resolve, the communicator is registered and both ranks created it;
else 1, naming what failed.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def linked_libraries(path):
    """{library: path or None} of `ldd path`."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        match = re.match(r"\s*(\S+) => (not found|(\S+))", line)
        if match:
            found[match.group(1)] = match.group(3)
    return found


def library_table():
    import importlib.util
    from unmix_nnabla.base import context
    spec = importlib.util.find_spec("nnabla_ext.cuda")
    if spec is None:
        print("nnabla-ext-cuda120 is not installed in %s: %s" % (sys.prefix, context.INSTALL_GPU))
        return 1
    folder = os.path.dirname(spec.origin)
    extension = [f for f in os.listdir(folder) if f.startswith("libnnabla_cuda")]
    if not extension:
        print("no libnnabla_cuda*.so in %s" % folder)
        return 1
    library = os.path.join(folder, extension[0])
    print("NNabla's CUDA extension: %s" % library)
    loaded = context.load_cuda_libraries()
    import nnabla
    nnabla_lib = os.path.join(os.path.dirname(nnabla.__file__), "libnnabla.so")
    unresolved = []
    for name, path in sorted(linked_libraries(library).items()):
        if path and not path.startswith("not"):
            where = "%s (system)" % path
        elif name in loaded:
            where = "%s (NVIDIA's pip wheel, loaded by context.py)" % loaded[name]
        elif name == "libnnabla.so" and os.path.isfile(nnabla_lib):
            where = "%s (the nnabla package, loaded by its import)" % nnabla_lib
        elif name == context.DRIVER_LIBRARY:
            where = "not found: the NVIDIA driver provides it (>= %s for CUDA 12)" % \
                context.MIN_DRIVER
            unresolved.append(name)
        else:
            where = "NOT FOUND"
            unresolved.append(name)
        print("  %-20s %s" % (name, where))
    # and what those libraries link in turn (cuSOLVER: cuSPARSE, nvJitLink; cuDNN: its parts)
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(context.wheel_library_folders()))
    transitive = []
    for name, path in sorted(loaded.items()):
        out = subprocess.run(["ldd", path], capture_output=True, text=True, env=env).stdout
        missing = sorted(set(re.findall(r"(\S+) => not found", out)) - {context.DRIVER_LIBRARY})
        if missing:
            print("  %s links %s: NOT FOUND" % (name, ", ".join(missing)))
            transitive += missing
    print("  what the %d libraries loaded from the wheels link in turn: %s"
          % (len(loaded), "NOT FOUND: " + ", ".join(transitive) if transitive else "all found"))
    unresolved += transitive
    try:
        context.import_cuda_extension()
        imported, failure = True, None
        print("import nnabla_ext.cuda: ok")
    except ImportError as exc:
        imported, failure = False, str(exc)
        print("import nnabla_ext.cuda: ImportError: %s" % failure)
    print("context.gpu_status(): %s" % (context.gpu_status(),))
    if imported and not unresolved:
        print("the GPU environment loads, and a driver is here")
        return 0
    if unresolved == [context.DRIVER_LIBRARY] and not imported and \
            failure.startswith(context.DRIVER_LIBRARY):
        print("every library resolves but the driver's %s: the environment loads wherever an "
              "NVIDIA driver >= %s is installed" % (context.DRIVER_LIBRARY, context.MIN_DRIVER))
        return 0
    print("FAILED: unresolved %s" % ", ".join(unresolved))
    return 1


def start_up():
    """(In a process with the stand-in driver) NNabla's real start-up through the project's
    code, reported line by line; the last line says whether the communicator is registered."""
    from unmix_nnabla.base import context
    context.load_cuda_libraries()
    for variable in ("NCCL_HOME", "OMPI_HOME", "CUDA_MODULE_LOADING"):
        print("%s=%s" % (variable, os.environ.get(variable, "(not set)")))
    nccl, mpi = context.nccl_library(), context.mpi_library()
    version = context.nccl_version(nccl) if nccl else None
    print("NCCL: NNabla will open %s%s" % (nccl, " (NCCL %s)" % ".".join(map(str, version))
                                           if version else ""))
    print("Open MPI: NNabla will open %s" % mpi)
    for line in context.missing_for_multi_gpu():
        print("MISSING: %s" % line)
    cuda = context.import_cuda_extension()
    print("import nnabla_ext.cuda (NNabla's init_cuda): ok, %s" % os.path.dirname(cuda.__file__))
    import nnabla.communicators as communicators
    from nnabla.ext_utils import get_extension_context
    try:
        comm = communicators.MultiProcessDataParallelCommunicator(
            get_extension_context("cudnn"))
        registered = comm.name
        print("NNabla's communicator for cudnn:float: %s (registered)" % registered)
    except Exception as exc:
        registered = None
        print("NNabla has no communicator for cudnn:float: %s" % " / ".join(
            str(exc).strip().splitlines()))
    for capability in ("5.2", "8.0", "12.0"):
        os.environ["STANDIN_CC"] = capability  # the stand-in reads it at each call
        sys.stderr.flush()
        print("gpu_status, a GPU of compute capability %s: %s"
              % (capability, context.gpu_status(0, runtime=False)), flush=True)
    os.environ.pop("STANDIN_CC")
    print("the first device call (gpu_status, asking the CUDA runtime): %s"
          % (context.gpu_status(0),))
    print("REGISTERED" if registered else "NOT REGISTERED")
    return 0


def rank():
    """(A rank of `mpirun -n 2` with the stand-in driver) the project's communicator."""
    from unmix_nnabla.base.runtime import UmxError
    from unmix_nnabla.training.comm import get_communicator
    name = "rank %s of %s (local rank %s)" % tuple(os.environ.get(v, "?") for v in (
        "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"))
    try:
        get_communicator("cudnn")
    except UmxError as exc:
        created = re.search(r"NNabla's (MultiProcessDataParallelCommunicatorNccl) did not start: "
                            r"(.*)", str(exc))
        if created:
            print("%s: the project's communicator created NNabla's %s on GPU %s; its start "
                  "(the first device call) failed: %s" % (name, created.group(1),
                                                          os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK"),
                                                          created.group(2).split(" / ")[-1]))
            return 0
        print("%s: FAILED: %s" % (name, exc))
        return 1
    print("%s: FAILED: the communicator started on a stand-in driver" % name)
    return 1


def _indented(text):
    return "".join("  " + line + "\n" for line in text.splitlines())


def build_standin(folder):
    """The stand-in libcuda.so.1 and libnvidia-ml.so.1 in `folder`, from tools/standin/."""
    for name in ("libcuda", "libnvidia-ml"):
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-o",
                        os.path.join(folder, name + ".so.1"),
                        os.path.join(ROOT, "tools", "standin", name + ".c")], check=True)


def main(argv):
    if argv[:1] == ["--start-up"]:
        return start_up()
    if argv[:1] == ["--rank"]:
        return rank()
    failures = []
    print("1. the libraries of NNabla's CUDA extension, on this machine (no driver)")
    if library_table() != 0:
        failures.append("a library does not resolve")
    if shutil.which("gcc") is None:
        print("FAILED: gcc builds the stand-in driver: apt-get install -y gcc")
        return 1
    with tempfile.TemporaryDirectory() as standin:
        build_standin(standin)
        env = dict(os.environ, STANDIN_GPUS="2", LD_LIBRARY_PATH=os.pathsep.join(
            [standin] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]))
        print("\n2. NNabla's start-up on a stand-in driver of 2 GPUs (libcuda.so.1, "
              "libnvidia-ml.so.1 built from tools/standin/)")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--start-up"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, cwd=ROOT)
        print(_indented(proc.stdout), end="")
        if proc.returncode != 0 or not proc.stdout.rstrip().endswith("\nREGISTERED"):
            failures.append("NNabla did not register its NCCL communicator")
        print("\n3. mpirun -n 2 on the stand-in: the project's communicator on each rank")
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            failures.append("no mpirun: apt-get install -y openmpi-bin libopenmpi-dev")
        else:
            proc = subprocess.run([mpirun, "-n", "2", "--allow-run-as-root", "--oversubscribe",
                                   sys.executable, os.path.abspath(__file__), "--rank"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=env, cwd=ROOT, timeout=300)
            print(_indented(proc.stdout), end="")
            if proc.returncode != 0 or proc.stdout.count("the project's communicator created") != 2:
                failures.append("a rank did not create the communicator")
    print()
    if failures:
        print("FAILED: %s" % "; ".join(failures))
        return 1
    print("ok: the GPU environment loads; NNabla finds NCCL and Open MPI and registers its NCCL "
          "communicator; the project's communicator starts on each rank up to the first device "
          "call, which needs a GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
