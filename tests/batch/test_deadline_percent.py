"""``--timeout N%``: the limit follows the median of successful runtimes, and the scheduler
measures each task against it by its own (injectable) clock."""

import time

import pytest

from pardo._batch import Batch, Template
from pardo._batch.options import MedianDeadline


def test_no_limit_before_three_successes_then_the_median_times_n():
    d = MedianDeadline(2.0)
    assert d.limit() is None and d.time_left(0.0, 1e9) is None
    d.observe(1.0)
    d.observe(3.0)
    assert d.limit() is None
    d.observe(2.0)
    assert d.limit() == 4.0
    assert d.time_left(started=10.0, now=12.5) == 1.5
    assert d.time_left(started=10.0, now=14.0) == 0.0  # at the limit: over
    assert d.time_left(started=10.0, now=15.0) == -1.0
    d.observe(10.0)
    d.observe(10.0)  # 1 2 3 10 10: the median moves to 3
    assert d.limit() == 6.0


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, t=5000.0):
        self.t = t

    def __call__(self):
        return self.t


def _batch(values, clock):
    return Batch(Template(["sleep {}"]), [(v,) for v in values], jobs=1, timeout="50%",
                 kill_grace=0.2, clock=clock)


def test_a_frozen_clock_never_reaches_the_limit():
    # By the real clock the fourth task outlives 50% of the median (0.2 s) five times over;
    # by the scheduler's clock no time passes, so it must run to its end.
    out = list(_batch(["0.2", "0.2", "0.2", "0.5"], FakeClock()))
    assert [r.status.value for r in out] == ["ok"] * 4
    assert out[-1].duration >= 0.5


def test_a_clock_that_leaps_past_the_limit_ends_the_task_at_once():
    clock = FakeClock()
    batch = _batch(["0.2", "0.2", "0.2", "30"], clock)

    class Leap:
        def __call__(self):  # once the fourth task has started, a long time has passed
            return clock.t + (1000.0 if batch.started >= 4 else 0.0)

    batch._clock = Leap()
    t0 = time.monotonic()
    out = list(batch)
    assert time.monotonic() - t0 < 10
    assert [r.status.value for r in out] == ["ok", "ok", "ok", "timeout"]
    assert out[-1].deadline == pytest.approx(0.5 * sorted(r.duration for r in out[:3])[1])
    assert out[-1].duration < 5
