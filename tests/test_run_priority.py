"""The supervisor thread may run at a raised priority so deadlines fire on a saturated
machine; tasks must never inherit it. And tasks held behind ResultQueue(max_running=)
obey kill() before they start."""

import os
import time

import pardo
from pardo import _supervisor


def _sched(r):
    fields = {}
    for line in r.stdout.decode().splitlines():
        if ":" in line:
            k, _, v = line.partition(":")
            fields[k.strip()] = v.strip()
    return fields


def test_task_gets_normal_policy_and_our_nice():
    r = pardo.run(["cat", "/proc/self/sched"]).check()
    f = _sched(r)
    assert f["policy"] == "0"  # SCHED_OTHER, whatever the supervisor thread runs at
    r = pardo.run(["nice"]).check()
    assert int(r.stdout) == os.nice(0)


def test_nice_argument_applies():
    assert int(pardo.run(["nice"], nice=7).check().stdout) == 7


def test_supervisor_reports_its_priority():
    assert _supervisor.get().priority() in ("SCHED_FIFO 1", "nice -10", "normal")
    if os.geteuid() == 0:
        assert _supervisor.get().priority() == "SCHED_FIFO 1"


def test_kill_of_a_held_task_cancels_it_without_starting():
    q = pardo.ResultQueue(max_running=1)
    first = pardo.spawn(["sleep", "1"], queue=q)
    held = pardo.spawn(["sleep", "30"], queue=q)
    time.sleep(0.1)
    held.kill()
    t0 = time.monotonic()
    got = q.get(timeout=5)
    assert got is held and got.result.status == "cancelled" and got.result.pid is None
    assert time.monotonic() - t0 < 0.5
    assert q.get(timeout=5).result.status == "ok" and first.done()


def test_max_running_bounds_concurrency(tmp_path):
    q = pardo.ResultQueue(max_running=2)
    script = f"echo start >> {tmp_path}/log; sleep 0.2; echo end >> {tmp_path}/log"
    for _ in range(6):
        pardo.spawn(script, shell=True, queue=q)
    while len(q):
        assert q.get(timeout=10).result.ok
    running = peak = 0
    for line in (tmp_path / "log").read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_executable_is_run_with_args0_as_its_name():
    r = pardo.run(["my-name", "-c", 'echo "$0"'], executable="/bin/sh").check()
    assert r.stdout == b"my-name\n"
    r = pardo.run(["x"], executable="/pardo-no-such-program")
    assert r.status == "error" and "/pardo-no-such-program" in r.error
