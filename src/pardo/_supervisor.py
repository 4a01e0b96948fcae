"""The process-wide native supervisor: started on first use, configured once, stopped at
interpreter exit, forgotten in a forked child; and what ``pardo doctor`` reports of it."""

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


def shutdown() -> None:
    """Kill every task tree still running and stop the supervisor thread."""
    global _sup
    with _lock:
        if _sup is None:
            return
        _sup = None
    from . import _engine

    _engine.shutdown()


_RUNG_ORDER = _RUNGS[1:]  # the rungs themselves, strongest first
_WHAT_ESCAPES = {
    "cgroup": "nothing: every process a task starts stays in its cgroup until killed",
    "shepherd": "processes that leave the task's tree and are not its descendants any more "
    "(e.g. handed to another parent over a socket); setsid/double-fork escapees are caught",
    "pgroup": "setsid and setpgid escapees and double-fork daemons (they leave the task's "
    "process group); if pardo itself is SIGKILLed, a guardian process kills every task's "
    "group",
}
# Without the helper program there is no guardian: the leaders still die with pardo
# (PDEATHSIG), what they started does not.
_PGROUP_NO_GUARDIAN = ("setsid and setpgid escapees, double-fork daemons, and grandchildren "
                       "when pardo itself is SIGKILLed (no guardian: see why)")


def _cannot_start() -> str | None:
    """None when a task can start here, else why not (one real start of /bin/true)."""
    from ._run import run

    r = run(["/bin/true"], timeout=30)
    return None if r.status == "ok" else (r.error or f"/bin/true: {r.describe()}")


def report() -> dict:
    """Everything ``pardo doctor`` prints, as a dict (for tools and tests)."""
    from . import _engine

    sup = get()
    features = dict(_engine.probe_features())
    cgroup_why = _engine.cgroup_unavailable_reason()
    rung = sup.rung
    why_not = {}
    for stronger in _RUNG_ORDER[: _RUNG_ORDER.index(rung)]:
        if stronger == "cgroup":
            why_not["cgroup"] = cgroup_why or sup.reason
        elif stronger == "shepherd":
            why_not["shepherd"] = sup.reason
    forced = _isolation or os.environ.get("PARDO_ISOLATION") or None
    return {
        "rung": rung,
        "reason": sup.reason,
        "forced": forced,
        "stronger_rungs_unavailable": why_not,
        "escapes": (_PGROUP_NO_GUARDIAN if rung == "pgroup" and "no guardian" in sup.reason
                    else _WHAT_ESCAPES[rung]),
        "features": features,
        "cpus": len(os.sched_getaffinity(0)),
        "supervisor_priority": sup.priority(),
        "shepherd": shepherd_path(),
        "cannot_start": _cannot_start(),
        "is_pid1": os.getpid() == 1,
    }


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
