"""How the project's processes run: errors reported as one line by the CLIs, stage timings."""
import time
from contextlib import contextmanager


class UmxError(Exception):
    """A problem with the user's input, reported as one line by the CLIs."""


def exit_on_error(function, *args):
    """Run a CLI's work; a UmxError becomes one 'error: ...' line on stderr and exit code 1."""
    import sys
    try:
        return function(*args)
    except UmxError as exc:
        print("error: %s" % exc, file=sys.stderr)
        sys.exit(1)


@contextmanager
def timed(timings, stage):
    """Add the block's wall time to timings[stage] (when a dict is given)."""
    start = time.perf_counter()
    yield
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
