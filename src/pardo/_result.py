"""What one finished task was: :class:`Result` and its :class:`Status`."""

from __future__ import annotations

import enum
import signal as _signal
from dataclasses import dataclass, field

from ._errors import TaskError, TaskTimeout


class Status(str, enum.Enum):
    """How a task ended. Members compare equal to their string values."""

    OK = "ok"  # exited 0
    FAILED = "failed"  # exited with a non-zero code
    TIMEOUT = "timeout"  # ran past its deadline; its tree was killed
    SIGNALED = "signaled"  # killed by a signal pardo did not send
    ERROR = "error"  # could not be started (see Result.error)
    CANCELLED = "cancelled"  # killed on request (Task.kill, Ctrl-C, halt)
    CRASHED = "crashed"  # Python tasks only: the worker process died

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


def signal_name(signum):
    """``SIGSEGV`` for 11; ``signal 99`` for numbers Python does not name."""
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass(eq=False, repr=False)
class Result:
    """The record of one finished task.

    Attributes:
        args: the argv the task ran (a list of str or bytes), or the shell command.
        status: a :class:`Status`; compares equal to ``"ok"``, ``"failed"``, ...
        returncode: exit code if the leader exited, else None.
        signal: number of the signal that killed the leader, else None.
        stdout, stderr: captured bytes (empty when streamed to a file or not captured).
        output_truncated: True when a stream passed ``max_output`` and the rest was dropped.
        started_at: wall-clock time the task started (seconds since the epoch).
        duration: seconds from start until the whole tree was gone (monotonic clock).
        cpu_user, cpu_sys: CPU seconds used by the task's whole tree where the isolation
            rung can count it (cgroup, shepherd), else by the leader and its reaped children.
        max_rss: peak resident set size in bytes of the largest process measured. Under
            the cgroup and pgroup rungs it is at least the caller's RSS at the task's start
            (the leader is a clone of the caller, and exec carries the high-water mark of
            the address space it leaves); under shepherd it is the tree's own.
        error: why the task could not start (status "error"), else None.
        pid: pid of the task's leader (None if it never started).
        deadline: the timeout the task ran under, in seconds, or None.
        note: something unusual the engine saw (e.g. a tree that would not die), or None.
    """

    args: object
    status: Status
    returncode: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    output_truncated: bool = False
    started_at: float = 0.0
    duration: float = 0.0
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    max_rss: int = 0
    error: str | None = None
    pid: int | None = None
    deadline: float | None = None
    watch_seq: int = field(default=0)
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def describe(self) -> str:
        """One line that says how the task ended, for messages and summaries."""
        s = self.status
        if s == Status.OK:
            return "exited 0"
        if s == Status.FAILED:
            return f"exited {self.returncode}"
        if s == Status.TIMEOUT:
            if self.deadline is None:
                return "timed out"
            return f"timed out after {self.deadline:g} s"
        if s in (Status.SIGNALED, Status.CRASHED) and self.signal:
            return f"killed by {signal_name(self.signal)}"
        if s == Status.ERROR:
            return f"could not start: {self.error}"
        if s == Status.CANCELLED:
            return "cancelled"
        return str(s)

    def check(self) -> Result:
        """Return self if the task succeeded, else raise :class:`pardo.TaskError`
        (:class:`pardo.TaskTimeout` for a deadline) carrying this result."""
        if self.status == Status.OK:
            return self
        cmd = self.args if isinstance(self.args, str) else " ".join(map(_show, self.args))
        msg = f"command {cmd!r} {self.describe()}"
        tail = (self.stderr or b"")[-400:].decode("utf-8", "replace").strip()
        if tail:
            msg += f"; stderr ends with: {tail}"
        cls = TaskTimeout if self.status == Status.TIMEOUT else TaskError
        raise cls(msg, self)

    def __repr__(self) -> str:
        parts = [f"status={self.status.value!r}"]
        if self.returncode is not None:
            parts.append(f"returncode={self.returncode}")
        if self.signal is not None:
            parts.append(f"signal={signal_name(self.signal)}")
        if self.error:
            parts.append(f"error={self.error!r}")
        parts.append(f"duration={self.duration:.3f}")
        return f"Result(args={self.args!r}, {', '.join(parts)})"


def _show(a):
    return a.decode("utf-8", "surrogateescape") if isinstance(a, bytes) else str(a)
