"""The process-wide native supervisor: started on first use, configured once, stopped at
interpreter exit, forgotten in a forked child."""

from __future__ import annotations

import atexit
import os
import threading

from ._errors import IsolationUnavailable, UsageError

_RUNGS = ("auto", "cgroup", "shepherd", "pgroup")
_lock = threading.Lock()
_sup = None
_isolation = None  # set by configure(); else PARDO_ISOLATION; else "auto"


def shepherd_path() -> str:
    """Path of the pardo-shepherd helper, installed beside the compiled engine."""
    from . import _engine

    return os.path.join(os.path.dirname(_engine.__file__), "bin", "pardo-shepherd")


def _wanted() -> str:
    rung = _isolation or os.environ.get("PARDO_ISOLATION", "") or "auto"
    if rung not in _RUNGS:
        raise IsolationUnavailable(rung, f"unknown rung; use one of {', '.join(_RUNGS)}")
    return rung


def get():
    """The running supervisor, started on first use."""
    global _sup
    sup = _sup
    if sup is not None:
        return sup
    with _lock:
        if _sup is None:
            from . import _engine

            rung = _wanted()
            try:
                _sup = _engine.supervisor(rung, shepherd_path())
            except ValueError as e:
                raise IsolationUnavailable(rung, str(e)) from None
        return _sup


def configure(*, isolation: str | None = None) -> None:
    """Choose how tasks are isolated: ``"auto"`` (default: the strongest available),
    ``"cgroup"``, ``"shepherd"`` or ``"pgroup"``. The environment variable
    ``PARDO_ISOLATION`` does the same. Takes effect for the next supervisor: call it before
    the first task, or when no task is in flight (the running supervisor is then stopped).

    Raises:
        IsolationUnavailable: the rung cannot be had here (the message says why).
        RuntimeError: tasks are still running.
    """
    global _isolation, _sup
    if isolation is not None and isolation not in _RUNGS:
        raise UsageError(f"isolation must be one of {', '.join(_RUNGS)}, not {isolation!r}")
    with _lock:
        if _sup is not None:
            if _sup.in_flight():
                raise RuntimeError("cannot change isolation while tasks are running")
            from . import _engine

            _engine.shutdown()
            _sup = None
        _isolation = isolation
    get()


def isolation() -> str:
    """The isolation rung in force: ``"cgroup"``, ``"shepherd"`` or ``"pgroup"``."""
    return get().rung


def isolation_reason() -> str:
    return get().reason


def shutdown() -> None:
    """Kill every task tree still running and stop the supervisor thread."""
    global _sup
    with _lock:
        if _sup is None:
            return
        _sup = None
    from . import _engine

    _engine.shutdown()


def _after_fork_in_child() -> None:
    global _sup, _lock
    _sup = None
    _lock = threading.Lock()
    try:
        from . import _engine

        _engine.forget()
    except ImportError:
        pass


os.register_at_fork(after_in_child=_after_fork_in_child)
# The native thread must be joined before the interpreter goes away.
atexit.register(shutdown)
