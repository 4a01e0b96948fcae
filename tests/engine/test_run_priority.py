"""The supervisor thread may run at a raised priority so deadlines fire on a saturated
machine; tasks must never inherit it. And tasks held behind ResultQueue(max_running=)
obey kill() before they start."""

import os
import subprocess
import sys
import time

import pytest

import pardo
from pardo import _supervisor

from support import SYSTEM_PYTHON, as_nobody_argv, nobody_env


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


NICE_SCRIPT = r"""
import os, sys, pardo
from pardo import _supervisor
os.nice(int(sys.argv[1]))
r = pardo.run(["nice"]).check()
print(_supervisor.get().priority(), int(r.stdout), os.nice(0))
"""


@pytest.mark.parametrize("start_nice", [0, 5])
@pytest.mark.parametrize("mode", ["realtime", "nice", "nobody"])
def test_task_starts_at_the_process_nice_whatever_the_supervisor_runs_at(
        mode, start_nice, request):
    """The child skips its setpriority() call when the fork already gives it the right
    value; that must hold for each way the supervisor thread can run: SCHED_FIFO, raised
    nice (PARDO_NO_REALTIME), and unraised (an unprivileged user)."""
    argv = [sys.executable, "-c", NICE_SCRIPT, str(start_nice)]
    env = dict(os.environ)
    if mode == "nice":
        env["PARDO_NO_REALTIME"] = "1"
    elif mode == "nobody":
        argv = as_nobody_argv([SYSTEM_PYTHON, *argv[1:]])
        env = nobody_env(request.getfixturevalue("nobody_pythonpath"), "/")
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    *priority, task_nice, own_nice = p.stdout.split()
    expected = {"realtime": "SCHED_FIFO 1", "nice": "nice -10", "nobody": "normal"}[mode]
    if os.geteuid() == 0:
        assert " ".join(priority) == expected
    assert int(task_nice) == int(own_nice) == start_nice
