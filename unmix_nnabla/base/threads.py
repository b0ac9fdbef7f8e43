"""Threads: how many this process's parallel work takes (`compute_threads`, `thread_share`,
`limit_blas_threads`, the user's BLAS choice respected: `blas_threads_chosen`), the cores it may
run on (`available_cores`), and two stages of a stream side by side (`ahead`: items computed in a
background thread one ahead of their consumer, each stage on its share of the cores).
"""
import os
import queue
import sys
import threading
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

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
    threadpool_limits(limits=count, user_api="blas")


def available_cores():
    """The cores this process may run on (its affinity: a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


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
