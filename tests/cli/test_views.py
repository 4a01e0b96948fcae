"""The views of ``pardo run``: the summary and the progress bar render from the batch's
counters and results, with elapsed time read from an injectable clock."""

import io

from pardo._cli.views import Progress, Summary
from pardo._result import Result, Status


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def _result(seq, status, duration, returncode=None):
    r = Result(args=["x"], status=status, duration=duration, returncode=returncode)
    r.seq = seq
    return r


def test_summary_counts_percentiles_slowest_and_failures():
    clock = FakeClock()
    s = Summary(clock=clock)
    for i in range(1, 11):
        s.add(_result(i, Status.OK, i / 10), f"cmd {i}")
    s.add(_result(11, Status.FAILED, 0.05, returncode=3), "cmd 11")
    s.add(_result(12, Status.FAILED, 0.05, returncode=3), "cmd 12")
    clock.t += 12.5
    lines = s.render().splitlines()
    assert lines[0] == "pardo: 12 tasks in 12.50 s (2 failed, 10 ok)"
    assert lines[1] == "  duration p50 0.500 s, p95 1.000 s, max 1.000 s"
    assert lines[2] == "  slowest:"
    assert lines[3].split() == ["1.000", "s", "#10", "cmd", "10"]
    assert lines[-2:] == ["  failures:", "         2 x exited 3 (#11, #12)"]


def test_progress_elapsed_and_eta_come_from_the_clock():
    class Counters:
        finished, running, by_status = 25, {1: None, 2: None}, {"ok": 25}

    clock = FakeClock()
    buf = io.StringIO()
    bar = Progress(Counters(), total=100, file=buf, clock=clock)
    clock.t += 10.0
    from rich.console import Console

    console = Console(file=buf, width=120, force_terminal=False)
    console.print(bar._render())
    text = buf.getvalue()
    assert "25/100  25%  ETA  30.0s" in text  # 10 s for 25 tasks: 30 s for the other 75
    assert "2 running" in text and "ok 25" in text and "10.0s" in text
