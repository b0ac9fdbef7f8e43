"""Child processes that never outlive their parent: `worker_pool(n)`, forked workers that die
with their parent even when it is killed with SIGKILL (Linux `PR_SET_PDEATHSIG`), ignore Ctrl-C
(the parent handles it and ends them) and are killed at once when the parent's work fails;
`die_with_parent` for other children (the ffmpeg decoder); `available_memory`, which with the
cores decides how many workers a separation runs; `mpi_world_size`, the ranks of the MPI job
this process belongs to.
"""
import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.threads import limit_blas_threads

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid=None):
    """In a child process: be killed (SIGKILL) when the parent ends, however it ends.

    Linux only (prctl); elsewhere the parent's own cleanup ends its children. The signal comes
    when the parent *thread* that forked ends: fork from the main thread. If the parent is
    already gone (it died between the fork and this call), exit at once.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def available_memory(meminfo="/proc/meminfo", cgroup="/sys/fs/cgroup"):
    """Bytes this process can still take without swapping: the system's MemAvailable, or less
    when a cgroup (v2, a container's) limits the memory; None where neither can be read."""
    amounts = []
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    amounts.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(os.path.join(cgroup, "memory.max")) as f:
            limit = f.read().strip()
        with open(os.path.join(cgroup, "memory.current")) as f:
            current = int(f.read())
        if limit != "max":
            amounts.append(max(0, int(limit) - current))
    except (OSError, ValueError):
        pass
    return min(amounts) if amounts else None


def _init_worker(parent_pid, threads):
    die_with_parent(parent_pid)
    # workers run side by side: their threads share the cores, so that they never
    # oversubscribe them (measured on 2 cores: 2 processes x 1 thread beat 1 x 2 and 2 x 2)
    limit_blas_threads(threads)
    numba = sys.modules.get("numba")
    if numba is None:  # imported later: it reads its thread count then
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
    else:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    # Ctrl-C reaches the whole process group: the parent alone handles it and ends the
    # workers; the parent's SIGTERM handler must not run in a worker either
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@contextmanager
def worker_pool(processes, threads=1):
    """A ProcessPoolExecutor of `processes` forked workers that die with this process, each
    with `threads` BLAS and numba threads (unless the user chose BLAS threads).

    Workers inherit the parent's memory (fork). If the block fails or is interrupted, the
    workers are killed at once instead of finishing their jobs; a worker that dies (killed,
    out of memory) becomes one UmxError.
    """
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                               initializer=_init_worker, initargs=(os.getpid(), threads))
    try:
        yield pool
    except BrokenProcessPool:
        _kill_workers(pool)
        raise UmxError("a worker process died (killed, or out of memory)") from None
    except BaseException:
        _kill_workers(pool)
        raise
    pool.shutdown(wait=True)


def _kill_workers(pool):
    """Kill the workers, then wait for the pool's own threads to see them gone: a pool whose
    management thread still runs when the interpreter exits races with it on its pipes (an
    OSError traceback after the one-line report)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        try:
            process.kill()
        except (OSError, ValueError):
            pass
    for process in processes:
        process.join(timeout=10)
    pool.shutdown(wait=True, cancel_futures=True)


def mpi_world_size():
    """Ranks of the MPI job this process belongs to (1 when not started by mpirun)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 1
