"""Ctrl-C, SIGTERM and ``--halt now`` end tasks with SIGTERM first, so they can clean up."""

import contextlib
import signal
import subprocess
import sys
import time

from pardo_cli import pardo_cmd

# A task that says it started, then on SIGTERM writes that it cleaned up and exits. Its
# background sleep starts before the trap is set: a shell's child forked after it carries
# the trap until its exec, and a SIGTERM to the group in that moment ran the cleanup
# twice (once in the child). Once ready-{} exists, no such child is left.
_CLEANS_UP = ("sleep 30 & trap 'echo cleaned {} >> %(log)s; exit 0' TERM; "
              "touch %(dir)s/ready-{}; wait")


def _wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def _pardo(args):
    """``pardo run ARGS`` running; killed on the way out if a test left it running."""
    p = subprocess.Popen(pardo_cmd() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def _finish(p, timeout=15):
    """Wait for pardo to exit; return (stdout, stderr as text, seconds it took)."""
    t = time.monotonic()
    out, err = p.communicate(timeout=timeout)
    return out, err.decode(), time.monotonic() - t


def test_first_sigint_sends_the_termination_sequence(tmp_path):
    log = tmp_path / "log"
    cmd = _CLEANS_UP % {"log": log, "dir": tmp_path}
    with _pardo(["-j2", "--summary", cmd, ":::", "a", "b", "c"]) as p:
        assert _wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2)
        p.send_signal(signal.SIGINT)
        _, err, took = _finish(p)
    assert p.returncode == 130
    assert sorted(log.read_text().split("\n")) == ["", "cleaned a", "cleaned b"]
    assert "SIGINT: starting no more tasks; sent SIGTERM to 2 running tasks, SIGKILL after 2 s" \
        in err
    assert "pardo: interrupted: 0 tasks finished, 2 interrupted, 1 never started\n" in err
    assert took < 2, f"{took:.2f} s from Ctrl-C to exit"


def test_sigterm_is_gentle_too(tmp_path):
    log = tmp_path / "log"
    with _pardo(["-j1", _CLEANS_UP % {"log": log, "dir": tmp_path}, ":::", "a"]) as p:
        assert _wait_for(lambda: (tmp_path / "ready-a").exists())
        p.send_signal(signal.SIGTERM)
        _finish(p)
    assert p.returncode == 143
    assert log.read_text() == "cleaned a\n"


def test_second_sigint_kills_at_once(tmp_path):
    # The task ignores SIGTERM and the grace is long: only the second Ctrl-C ends it soon.
    cmd = f"trap '' TERM; touch {tmp_path}/ready-{{}}; while :; do sleep 0.05; done"
    with _pardo(["--kill-grace", "60", cmd, ":::", "a"]) as p:
        assert _wait_for(lambda: (tmp_path / "ready-a").exists())
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert p.poll() is None  # still in its grace
        p.send_signal(signal.SIGINT)
        _, err, took = _finish(p)
    assert p.returncode == 130
    assert "SIGINT again: killing the running tasks now" in err
    assert took < 5


def test_halt_now_sends_the_termination_sequence(tmp_path):
    log = tmp_path / "log"
    with _pardo(["-j2", "--halt", "now,fail=1", "{}", ":::",
                 _CLEANS_UP.replace("{}", "x") % {"log": log, "dir": tmp_path},
                 f"until [ -e {tmp_path}/ready-x ]; do sleep 0.02; done; exit 7"]) as p:
        _finish(p)
    assert p.returncode == 7
    assert log.read_text() == "cleaned x\n"


# Counts each SIGTERM it receives (one line per signal, written by the handler), and only
# exits at SIGKILL: the log says how many SIGTERMs reached it.
_COUNTS_TERMS = ("import os, signal, sys, time\n"
                 "log, ready = sys.argv[1], sys.argv[2]\n"
                 "signal.signal(signal.SIGTERM, lambda *a: os.write(fd, b't'))\n"
                 "fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
                 "open(ready, 'w').close()\n"
                 "while True:\n"
                 "    time.sleep(0.001)\n")


def test_ctrl_c_sends_each_task_one_sigterm(tmp_path):
    """A shell's trap runs once per SIGTERM it gets, and a second one arriving while the
    first trap runs ran the cleanup twice: each running task gets exactly one SIGTERM (the
    run loop's own pass after the handler's must skip the tasks the handler reached)."""
    script = tmp_path / "counts.py"
    script.write_text(_COUNTS_TERMS)
    cmd = f"exec {sys.executable} {script} {tmp_path}/log-{{}} {tmp_path}/ready-{{}}"
    with _pardo(["-j2", "--kill-grace", "1", cmd, ":::", "a", "b", "c"]) as p:
        assert _wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2)
        p.send_signal(signal.SIGINT)
        _finish(p)
    assert p.returncode == 130
    assert [(tmp_path / f"log-{x}").read_text() for x in "ab"] == ["t", "t"]
