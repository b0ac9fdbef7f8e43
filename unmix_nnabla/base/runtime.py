"""How a CLI runs and ends: `run_cli(work, ...)`, the one way every CLI runs its work. A problem
becomes one line on stderr and a non-zero exit, never a traceback: `UmxError` (a problem with the
user's input, exit 1), Ctrl-C, SIGTERM or SIGHUP (exit 130/143/129, after the `finally` blocks
that remove staging folders and temporary files have run), running out of memory, and any
unexpected exception (named, with `UMX_TRACEBACK=1` to see where it came from).
`signals_deferred()`: Ctrl-C, SIGTERM and SIGHUP held while NNabla runs a graph, raised when it
returns (an exception raised inside a Python function that NNabla's C++ called would become an
unexpected SystemError, never the "interrupted" line).
"""
import os
import signal
import sys
import threading
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
    """' in <file>:<line>' of the innermost frame of the package's code (its path within the
    package, e.g. separation/separator.py), or ''."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    where = ""
    while tb is not None:
        path = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if path.startswith(package + os.sep):
            where = " in %s:%d" % (os.path.relpath(path, package), tb.tb_lineno)
        tb = tb.tb_next
    return where
