"""The errors pardo.Pool builds for a task, each saying what happened to which call."""

from __future__ import annotations

import pickle
import reprlib

from . import _shm
from ._errors import TaskCrashed, TaskTimeout
from ._pool_items import describe_call
from ._result import signal_name


def short_repr(obj) -> str:
    try:
        return reprlib.repr(obj)
    except Exception:
        return f"<{type(obj).__qualname__} object>"


def death_error(result, status, item, pid, deadline_ns, seen_ns):
    """TaskTimeout or TaskCrashed for the call a worker was running when it died.

    Args:
        result: the worker's engine Result (status, signal, returncode).
        status: ``str(result.status)``.
        item: the WorkItem of the call.
        pid: the worker's pid.
        deadline_ns: the deadline read from the worker's slot (0 if none).
        seen_ns: when the pool learnt of the death (monotonic ns).
    """
    call = describe_call(item.fn)
    if status == "timeout":
        late_ms = (seen_ns - deadline_ns) / 1e6 if deadline_ns else float("nan")
        err = TaskTimeout(
            f"{call} ran past its {item.timeout_ns / 1e9:g} s deadline; worker pid {pid} "
            f"and its child processes were killed (reported {late_ms:.1f} ms after the "
            f"deadline)",
            result,
        )
        err.late = late_ms / 1e3  # seconds from the deadline to the pool knowing
        return err
    signum = result.signal
    if signum:
        how = f"was killed by {signal_name(signum)}"
    else:
        how = f"exited with code {result.returncode} (os._exit, or a fault in native code)"
    return TaskCrashed(
        f"worker pid {pid} running {call} {how}; the pool goes on with a new worker",
        result,
        signal=signum,
        exitcode=result.returncode,
        pid=pid,
    )


def pickling_error(item, exc):
    """A PicklingError for a one-call item that names the argument that cannot be pickled."""
    culprit = None
    args = list(enumerate(item.args[0]))
    kwargs = list((item.kwargs[0] if item.kwargs else {}).items())
    for key, value in args + kwargs:
        try:
            _shm.dumps(value)
        except BaseException:
            culprit = (key, value)
            break
    call = describe_call(item.fn)
    if culprit is None:
        what = "the arguments"
    elif isinstance(culprit[0], int):
        what = f"argument {culprit[0]} ({short_repr(culprit[1])})"
    else:
        what = f"keyword argument {culprit[0]!r} ({short_repr(culprit[1])})"
    err = pickle.PicklingError(
        f"{what} of {call} cannot be pickled to send to a worker: {type(exc).__name__}: {exc}"
    )
    err.__cause__ = exc
    return err
