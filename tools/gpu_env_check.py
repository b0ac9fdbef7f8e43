"""Prove, on a machine without a GPU, that the GPU environment loads: `make gpu-env-check`.

Run in a venv with requirements.txt and requirements-gpu.txt installed (the make target makes
one apart, .venv-gpu-check). For every shared library that NNabla's CUDA extension
(libnnabla_cuda-120_8.so) links, it says where it is found: in NVIDIA's pip wheels (loaded by
context.load_cuda_libraries, no LD_LIBRARY_PATH), in NNabla's own package, or on the system;
then it imports the extension. Success (exit 0): every library resolves but the driver's
libcuda.so.1, and the import fails for want of the driver alone (on a machine with a GPU and
its driver: everything resolves and the import succeeds). Otherwise exit 1, naming what is
missing.
"""
import os
import re
import subprocess
import sys

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


def main():
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
        import nnabla_ext.cuda  # noqa: F401
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


if __name__ == "__main__":
    sys.exit(main())
