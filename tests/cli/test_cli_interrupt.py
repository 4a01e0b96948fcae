"""Ctrl-C, SIGTERM and ``--halt now`` end tasks with SIGTERM first, so they can clean up."""

import signal
import subprocess
import time

from _clirun import pardo_cmd

# A task that says it started, then on SIGTERM writes that it cleaned up and exits.
_CLEANS_UP = ("trap 'echo cleaned {} >> %(log)s; exit 0' TERM; touch %(dir)s/ready-{}; "
              "sleep 30 & wait")


def _wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _start(args):
    return subprocess.Popen(pardo_cmd() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(p, timeout=15):
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return out, err.decode()


def test_first_sigint_sends_the_termination_sequence(tmp_path):
    log = tmp_path / "log"
    cmd = _CLEANS_UP % {"log": log, "dir": tmp_path}
    p = _start(["-j2", "--summary", cmd, ":::", "a", "b", "c"])
    try:
        assert _wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2)
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = _finish(p)
        took = time.monotonic() - sent
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130
    assert sorted(log.read_text().split("\n")) == ["", "cleaned a", "cleaned b"]
    assert "SIGINT: starting no more tasks; sent SIGTERM to 2 running tasks, SIGKILL after 2 s" \
        in err
    assert "pardo: interrupted: 0 tasks finished, 2 interrupted, 1 never started\n" in err
    assert took < 2, f"{took:.2f} s from Ctrl-C to exit"


def test_sigterm_is_gentle_too(tmp_path):
    log = tmp_path / "log"
    p = _start(["-j1", _CLEANS_UP % {"log": log, "dir": tmp_path}, ":::", "a"])
    try:
        assert _wait_for(lambda: (tmp_path / "ready-a").exists())
        p.send_signal(signal.SIGTERM)
        _finish(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143
    assert log.read_text() == "cleaned a\n"


def test_second_sigint_kills_at_once(tmp_path):
    # The task ignores SIGTERM and the grace is long: only the second Ctrl-C ends it soon.
    cmd = f"trap '' TERM; touch {tmp_path}/ready-{{}}; while :; do sleep 0.05; done"
    p = _start(["--kill-grace", "60", cmd, ":::", "a"])
    try:
        assert _wait_for(lambda: (tmp_path / "ready-a").exists())
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert p.poll() is None  # still in its grace
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = _finish(p)
        took = time.monotonic() - sent
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130
    assert "SIGINT again: killing the running tasks now" in err
    assert took < 5


def test_halt_now_sends_the_termination_sequence(tmp_path):
    log = tmp_path / "log"
    p = _start(["-j2", "--halt", "now,fail=1", "{}", ":::",
                _CLEANS_UP.replace("{}", "x") % {"log": log, "dir": tmp_path},
                f"until [ -e {tmp_path}/ready-x ]; do sleep 0.02; done; exit 7"])
    _finish(p)
    assert p.returncode == 7
    assert log.read_text() == "cleaned x\n"
