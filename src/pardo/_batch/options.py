"""The batch options that GNU parallel spells its own way: ``-j``, ``--timeout`` (seconds or
``N%`` of the median runtime), ``--halt`` and ``--colsep``; and the running median behind
``N%``."""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass

from .._errors import BatchError

# GNU's -j 0: "as many as possible"; bounded in practice by the fd and process limits.
JOBS_UNLIMITED = 1024


def parse_jobs(spec, ncpu: int) -> int:
    """GNU's ``-j``: ``N``, ``N%`` of the CPUs, ``+N``/``-N`` relative to them, 0 = no limit."""
    if spec is None:
        return ncpu
    s = str(spec).strip()
    try:
        if s.endswith("%"):
            n = int(float(s[:-1]) * ncpu / 100)
        elif s[:1] in "+-":
            n = ncpu + int(s)
        else:
            n = int(float(s))
            if n == 0:
                n = JOBS_UNLIMITED
    except ValueError:
        raise BatchError(f"-j/--jobs: {spec!r} is not N, N%, +N or -N") from None
    return max(1, n)


def parse_timeout(spec):
    """``--timeout``: seconds, or ``N%`` of the median runtime. Returns (seconds, fraction)."""
    if spec is None:
        return None, None
    if isinstance(spec, (int, float)):
        secs = float(spec)
    else:
        s = str(spec).strip()
        try:
            frac = float(s[:-1]) / 100 if s.endswith("%") else None
            secs = None if s.endswith("%") else float(s)
        except ValueError:
            raise BatchError(f"--timeout: {spec!r} is not seconds or N%") from None
        if frac is not None:
            if not frac > 0:
                raise BatchError(f"--timeout: {spec!r} must be a positive percentage")
            return None, frac
    if secs < 0 or secs != secs:
        # GNU parallel refuses it too; silently running without a deadline would be worse
        raise BatchError(f"--timeout: {spec!r} is negative; give seconds > 0 (0: no deadline)")
    return (secs if secs > 0 else None), None


def compile_colsep(colsep):
    """The compiled ``--colsep`` regular expression; BatchError if it is not one."""
    try:
        return re.compile(colsep)
    except re.error as e:
        raise BatchError(f"--colsep: {colsep!r} is not a regular expression: {e}") from None


@dataclass(frozen=True)
class HaltPolicy:
    """GNU's ``--halt when,why=N[%]``.

    Attributes:
        when: "now" (kill running tasks) or "soon" (let them finish).
        why: "fail", "success" or "done".
        count: absolute threshold, or None when ``fraction`` is used.
        fraction: threshold as a fraction of finished tasks (``N%``).
    """

    when: str
    why: str
    count: int | None
    fraction: float | None

    @classmethod
    def parse(cls, spec):
        if spec is None or spec == "never" or isinstance(spec, HaltPolicy):
            return spec if isinstance(spec, HaltPolicy) else None
        s = str(spec)
        # GNU's older forms: 0..2 and -1/-2, and N% for soon,fail=N%
        short = {"0": None, "1": "soon,fail=1", "2": "now,fail=1", "-1": "soon,success=1",
                 "-2": "now,success=1"}
        if s in short:
            return cls.parse(short[s])
        if re.fullmatch(r"\d+%", s):
            return cls.parse(f"soon,fail={s}")
        m = re.fullmatch(r"(now|soon)?,?(fail|success|done)=(\d+(?:\.\d+)?)(%?)", s)
        if not m:
            raise BatchError(
                f"--halt: {spec!r} is not now|soon,fail|success|done=N[%] (e.g. now,fail=1)"
            )
        when, why, num, pct = m.groups()
        if pct:
            return cls(when or "now", why, None, float(num) / 100)
        return cls(when or "now", why, max(1, int(float(num))), None)


class RunningMedian:
    """Exact running median with two heaps: O(log n) per sample."""

    def __init__(self):
        self._lo = []  # max-heap (negated)
        self._hi = []

    def __len__(self):
        return len(self._lo) + len(self._hi)

    def add(self, x):
        if self._lo and x > -self._lo[0]:
            heapq.heappush(self._hi, x)
        else:
            heapq.heappush(self._lo, -x)
        if len(self._lo) > len(self._hi) + 1:
            heapq.heappush(self._hi, -heapq.heappop(self._lo))
        elif len(self._hi) > len(self._lo):
            heapq.heappush(self._lo, -heapq.heappop(self._hi))

    def value(self):
        if len(self._lo) > len(self._hi):
            return -self._lo[0]
        return (-self._lo[0] + self._hi[0]) / 2


class MedianDeadline:
    """``--timeout N%``: a task may run ``fraction`` times the median runtime of the tasks
    that succeeded so far. The limit moves while the batch runs, so it is checked against
    each running task's start time by the scheduler's clock, never fixed at the start.

    Args:
        fraction: N% as a fraction (2.0 for 200%).
    """

    # A median of one or two runs says little: no limit until this many tasks succeeded.
    MIN_SAMPLES = 3

    def __init__(self, fraction: float):
        self.fraction = fraction
        self._median = RunningMedian()

    def observe(self, duration: float) -> None:
        """A task succeeded after ``duration`` seconds."""
        self._median.add(duration)

    def limit(self) -> float | None:
        """The deadline in seconds now, or None while there are too few samples."""
        if len(self._median) < self.MIN_SAMPLES:
            return None
        return self._median.value() * self.fraction

    def time_left(self, started: float, now: float) -> float | None:
        """Seconds a task started at ``started`` may still run at ``now`` (<= 0: past the
        deadline); None while there is no limit. Both times from the same clock."""
        limit = self.limit()
        return None if limit is None else started + limit - now
