"""What a CLI shows: `say` (lines unless --quiet), `warn` (always), progress bars only on a
terminal (a log file gets no carriage-return noise) and never with --quiet; `timed`, stage
timings.
"""
import sys
import time
from contextlib import contextmanager

from tqdm import tqdm

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
    return tqdm(iterable, disable=not (enabled and progress_enabled()), **kw)


@contextmanager
def timed(timings, stage):
    """Add the block's wall time to timings[stage] (when a dict is given)."""
    start = time.perf_counter()
    yield
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
