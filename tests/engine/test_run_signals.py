"""What a task inherits of signals: nothing blocked, default handlers, and ignored signals
kept ignored (as across any exec, so `nohup` works) except the ones Python ignores for
itself (SIGPIPE, SIGXFSZ), which programs expect at their default."""

import signal

import pytest

import pardo


def _mask(status_text, field):
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"{field} not in /proc/self/status")


def _bit(sig):
    return 1 << (sig - 1)


def test_task_starts_with_nothing_blocked_and_sigpipe_at_default():
    r = pardo.run(["cat", "/proc/self/status"]).check()
    text = r.stdout.decode()
    assert _mask(text, "SigBlk") == 0  # the supervisor thread blocks everything; tasks must not
    ign = _mask(text, "SigIgn")
    assert not ign & _bit(signal.SIGPIPE)
    assert not ign & _bit(signal.SIGXFSZ)
    assert _mask(text, "SigCgt") == 0  # no handlers survive exec anyway


@pytest.fixture
def hup_ignored():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, old)


def test_ignored_signals_stay_ignored(hup_ignored):
    r = pardo.run(["cat", "/proc/self/status"]).check()
    assert _mask(r.stdout.decode(), "SigIgn") & _bit(signal.SIGHUP)


def test_handled_signals_are_default_in_the_task():
    old = signal.signal(signal.SIGUSR1, lambda *a: None)
    try:
        r = pardo.run(["sh", "-c", "kill -USR1 $$; sleep 5"], timeout=10)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert r.status == "signaled" and r.signal == signal.SIGUSR1
