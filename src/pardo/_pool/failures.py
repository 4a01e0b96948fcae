"""The errors pardo.Pool builds for a task, each saying what happened to which call: in
the worker (an exception to send), in the parent (a death, a pickling failure, an error
payload to rebuild), and how the manager thread reports its own trouble."""

from __future__ import annotations

import logging
import pickle
import reprlib
import threading
import traceback

from .._errors import RemoteTraceback, TaskCrashed, TaskError, TaskTimeout
from .._result import signal_name
from . import shm

log = logging.getLogger("pardo.pool")


def describe_call(fn) -> str:
    """How messages name a call of ``fn``: ``Class.method()``, ``f()``, ``partial()``."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{name}()"


def short_repr(obj) -> str:
    """A repr short enough for a message, even for an object whose repr fails."""
    try:
        return reprlib.repr(obj)
    except Exception:
        return f"<{type(obj).__qualname__} object>"


def detach(exc):
    """Drop the tracebacks of ``exc`` and of the exceptions chained to it.

    An exception raised on the pool's manager thread carries frames that reference the
    manager, and through it the whole pool: handing it to a caller as is would keep the
    pool's pipes and processes alive for as long as the caller keeps the exception.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        if exc.__context__ is not None and exc.__cause__ is None:
            exc = exc.__context__
        else:
            if exc.__context__ is not None:
                detach(exc.__context__)
            exc = exc.__cause__
    return exc


def encode_error(exc):
    """The payload a worker sends for a failed call: the exception if it can travel, its
    traceback as text, and a one-line description for when the exception itself cannot."""
    tb_text = "".join(traceback.format_exception(exc))
    desc = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    try:
        return shm.dumps((exc, tb_text, desc))
    except BaseException:  # a SystemExit from some __reduce__ too: the worker goes on
        return shm.dumps((None, tb_text, desc))


def decode_error(payload, where: str) -> BaseException:
    """Rebuild the exception a worker sent (see :func:`encode_error`)."""
    try:
        exc, tb_text, desc = shm.loads(payload, unlink_after=True)
    except BaseException as err:  # the error payload itself is broken: say so, keep going
        reraise_interrupt(err)
        detach(err)
        return TaskError(f"a task failed in {where} and its error could not be read: {err!r}")
    if exc is None:
        exc = TaskError(f"task raised {desc} (the exception could not be pickled)")
    exc.__cause__ = RemoteTraceback(tb_text, where)
    return exc


def reraise_interrupt(err):
    """Let a real Ctrl-C through: a SystemExit (or a KeyboardInterrupt on a thread signals
    never reach, as the manager's) from some ``__reduce__`` only fails that call, and must
    not end the thread that unpickles, but Ctrl-C on the main thread stays Ctrl-C."""
    if isinstance(err, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        raise err


def death_error(result, status, item, pid, deadline_ns, seen_ns):
    """TaskTimeout or TaskCrashed for the call a worker was running when it died.

    Args:
        result: the worker's engine Result (status, signal, returncode).
        status: ``str(result.status)``.
        item: the WorkItem of the call.
        pid: the worker's pid.
        deadline_ns: the deadline read from the worker's watch record (0 if none).
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
            shm.dumps(value)
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


def report_callback_error(what, exc):
    # Log the traceback as text: a record holding the exception itself (exc_info) would
    # keep the manager's frames, and the whole pool, alive as long as the record lives.
    text = "".join(traceback.format_exception(exc))
    detach(exc)
    log.error("pardo.Pool: %s raised:\n%s", what, text)
