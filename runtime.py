"""How the project's processes run and end.

- `run_cli(work, ...)`: the one way every CLI runs its work. A problem becomes one line on
  stderr and a non-zero exit, never a traceback: `UmxError` (a problem with the user's input,
  exit 1), Ctrl-C, SIGTERM or SIGHUP (exit 130/143/129, after the `finally` blocks that remove
  staging folders and temporary files have run), running out of memory, and any unexpected
  exception (named, with `UMX_TRACEBACK=1` to see where it came from).
- `worker_pool(n)`: forked worker processes that die with their parent, even when the parent
  is killed with SIGKILL (Linux `PR_SET_PDEATHSIG`), ignore Ctrl-C (the parent handles it and
  ends them), and are killed at once when the parent's work fails or is interrupted.
- `available_cores`, `available_memory`: what the machine (or the container) leaves this process,
  from which the separation chooses its workers.
- `die_with_parent`: the same guarantee for other child processes (the ffmpeg decoder).
- `signals_deferred()`: Ctrl-C, SIGTERM and SIGHUP held while NNabla runs a graph, raised when
  it returns: an exception raised inside a Python function that NNabla's C++ called becomes
  an unexpected SystemError, never the "interrupted" line.
- `say`, `progress_bar`: what a CLI shows: lines unless --quiet, progress bars only on a
  terminal (a log file gets no carriage-return noise) and never with --quiet.
- `ahead(items)`: items computed in a background thread one ahead of their consumer, so that
  two stages of a stream (the Wiener filter's and the ISTFT's with the writing) overlap.
- `timed`: stage timings; `keep_freed_memory`: the allocator told to keep a training step's
  memory for the next one.
"""
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager


class UmxError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLIs."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: raised in the main thread so that cleanups run, as for Ctrl-C."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_held = {"depth": 0, "signal": None, "handlers": {}}


def _hold(signum, frame):
    if _held["signal"] is None:
        _held["signal"] = signum


@contextmanager
def signals_deferred():
    """Hold Ctrl-C, SIGTERM and SIGHUP for the block (one NNabla forward or backward pass that
    may call Python functions), then let the first one arrive as it would have: raised as
    KeyboardInterrupt / Interrupted, ignored if it was ignored. Nests; outside the main thread
    it does nothing (only the main thread receives signals)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _held["depth"] == 0:
        _held["handlers"] = {s: signal.signal(s, _hold) for s in INTERRUPTS}
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if _held["depth"] == 0:
            for signum, handler in _held["handlers"].items():
                # None: a handler set outside Python, which cannot be restored from here
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            pending, _held["signal"] = _held["signal"], None
            if pending is not None:
                signal.raise_signal(pending)  # the restored handler runs now


def run_cli(work, *args, on_error=None):
    """Run a CLI's work(*args) under the project's failure contract (see the module's doc).

    on_error(code): called before exiting on a failure (train.py aborts the other MPI ranks).
    """
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    try:
        return work(*args)
    except UmxError as exc:
        line, code = "error: %s" % exc, 1
    except KeyboardInterrupt:
        line, code = "interrupted (Ctrl-C): stopped, nothing half-written was left", 130
    except Interrupted as exc:
        line, code = ("interrupted (%s): stopped, nothing half-written was left" % exc,
                      128 + exc.signum)
    except MemoryError:
        line, code = "error: out of memory", 1
    except Exception as exc:  # a bug, or a failure nothing above anticipated: still one line
        if os.environ.get("UMX_TRACEBACK"):
            raise
        where = _origin(exc.__traceback__)
        line, code = ("error: unexpected %s%s: %s (set UMX_TRACEBACK=1 to see the traceback)"
                      % (type(exc).__name__, where, _first_line(exc)), 1)
    # a progress bar (possibly a killed worker's) may have left its line unfinished
    start = "\r\033[K" if sys.stderr.isatty() else "\n"
    print(start + line, file=sys.stderr, flush=True)
    if on_error is not None:
        on_error(code)
    if [t for t in threading.enumerate() if t.is_alive() and not t.daemon and
            t is not threading.main_thread()]:
        # every cleanup has run (the exception came up through them): an error does not wait
        # for background work (the compiled loops' first compilation takes half a minute)
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _origin(tb):
    """' in <file>:<line>' of the innermost frame of this project's code, or ''."""
    here = os.path.dirname(os.path.abspath(__file__))
    where = ""
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        if os.path.dirname(os.path.abspath(path)) == here:
            where = " in %s:%d" % (os.path.basename(path), tb.tb_lineno)
        tb = tb.tb_next
    return where


# --------------------------------------------------------------------------------------
# child processes that never outlive their parent
# --------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid=None):
    """In a child process: be killed (SIGKILL) when the parent ends, however it ends.

    Linux only (prctl); elsewhere the parent's own cleanup ends its children. The signal comes
    when the parent *thread* that forked ends: fork from the main thread. If the parent is
    already gone (it died between the fork and this call), exit at once.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


_BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_OURS = "UMX_BLAS_THREADS"  # the count this project put in those variables (not the user's)


def blas_threads_chosen(environ=os.environ):
    """Whether the user has chosen BLAS threads (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
    MKL_NUM_THREADS set, other than by `limit_blas_threads`): then the project leaves them
    alone."""
    ours = environ.get(_OURS)
    return any(environ.get(v) and environ.get(v) != ours for v in _BLAS_VARIABLES)


_THREADS = {}
_THIS_THREAD = threading.local()


def compute_threads():
    """Threads this process's own parallel work may take (scipy's FFTs, thread pools): the
    calling thread's share (`thread_share`), else the count `limit_blas_threads` set (a
    worker's share of the cores), else the available cores."""
    return getattr(_THIS_THREAD, "count", None) or _THREADS.get("count") or available_cores()


@contextmanager
def thread_share(count):
    """Inside the block, the calling thread's parallel work (`compute_threads`, and numba's
    loops when numba is loaded: its count is per thread too) takes `count` threads."""
    numba = sys.modules.get("numba")
    before = getattr(_THIS_THREAD, "count", None), numba and numba.get_num_threads()
    _THIS_THREAD.count = count
    if numba:
        numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        _THIS_THREAD.count = before[0]
        if numba:
            numba.set_num_threads(before[1])


def limit_blas_threads(count):
    """Let the BLAS libraries (and `compute_threads`) use at most `count` threads in this
    process; the BLAS is left alone when the user has chosen its threads.

    Both the libraries already loaded (threadpoolctl) and those loaded later: numba's matrix
    products call scipy's own OpenBLAS, loaded on first use, which reads its thread count from
    the environment then. Left at the core count in two worker processes, its spinning threads
    made their LSTM recurrences 10x slower."""
    count = max(1, int(count))
    _THREADS["count"] = count
    if blas_threads_chosen():
        return
    for variable in _BLAS_VARIABLES + (_OURS,):
        os.environ[variable] = str(count)
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=count, user_api="blas")


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # glibc's mallopt parameters


def keep_freed_memory():
    """Training: let this process's allocator keep freed memory for the next step instead of
    returning it to the system. glibc serves arrays over 32 MB with fresh mmaps, each page
    faulted in again on first use: an X-UMX step spent a third of its time in the kernel
    doing that. Its peak is the same each step, so keeping it costs no memory a step does not
    already take. Elsewhere (not glibc) nothing changes."""
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        for parameter, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30),
                                 (_M_TOP_PAD, 256 << 20)):
            libc.mallopt(parameter, value)
    except (OSError, AttributeError):
        pass


def return_freed_memory():
    """Give the memory freed so far back to the system (glibc keeps freed heap memory for
    later allocations; a forked worker would share those pages in its PSS). Elsewhere (not
    glibc) nothing happens."""
    import ctypes
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def available_cores():
    """The cores this process may run on (its affinity: a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


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
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
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


# --------------------------------------------------------------------------------------
# what a CLI shows
# --------------------------------------------------------------------------------------

_shown = {"quiet": False}


def set_quiet(quiet):
    """--quiet: nothing but warnings and errors."""
    _shown["quiet"] = bool(quiet)


def quiet():
    return _shown["quiet"]


def say(*args, **kw):
    """print(), unless --quiet."""
    if not _shown["quiet"]:
        print(*args, **kw)


def warn(message):
    """One line on stderr: "warning: ...", also with --quiet."""
    start = "\r\033[K" if sys.stderr.isatty() else ""  # after an unfinished progress bar
    print(start + "warning: " + message, file=sys.stderr, flush=True)


def progress_enabled():
    """Progress bars: on a terminal, unless --quiet."""
    return not _shown["quiet"] and sys.stderr.isatty()


def progress_bar(iterable=None, enabled=True, **kw):
    """tqdm, shown when `enabled` and `progress_enabled()`."""
    from tqdm import tqdm
    return tqdm(iterable, disable=not (enabled and progress_enabled()), **kw)


# --------------------------------------------------------------------------------------
# two stages of a stream side by side
# --------------------------------------------------------------------------------------

def ahead(items, depth=1):
    """Iterate over `items`, which a background thread computes up to `depth` items ahead of
    the consumer: numpy, scipy's FFT and compiled loops release the GIL, so the producer's
    work overlaps the consumer's. An exception raised by the producer is raised here, in
    order; closing the iterator early (an error or an interrupt in the consumer) stops the
    producer after its current item. The producer must not call what only the main thread
    may (signal handlers), nor compiled parallel loops while the consumer does (numba's
    workqueue threads serve one caller at a time). The two share the cores (`thread_share`):
    each stage's threads on as many cores of their own, not both on all of them (their
    parallel loops waited on each other's busy cores: 3x slower on 2 cores)."""
    import queue
    slots, stop = queue.Queue(depth), threading.Event()
    threads = compute_threads()
    consumer_threads, producer_threads = max(1, threads // 2), max(1, threads - threads // 2)

    def offer(entry):
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            with thread_share(producer_threads):
                for item in items:
                    if not offer((True, item)):
                        return
        except BaseException as exc:  # handed to the consumer, which raises it
            offer((False, exc))
            return
        offer((False, None))

    producer = threading.Thread(target=produce, name="ahead", daemon=True)
    producer.start()
    try:
        with thread_share(consumer_threads):
            while True:
                is_item, value = slots.get()
                if not is_item:
                    if value is not None:
                        raise value
                    return
                yield value
    finally:
        stop.set()
        producer.join()


# --------------------------------------------------------------------------------------
# timings
# --------------------------------------------------------------------------------------

@contextmanager
def timed(timings, stage):
    """Add the block's wall time to timings[stage] (when a dict is given)."""
    start = time.perf_counter()
    yield
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
