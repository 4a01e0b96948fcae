"""A program that cannot start is reported once, with a count, not once per input."""

import subprocess

from pardo_cli import pardo_cmd

_MISSING = "pardo-no-such-program-xyz"
_WHY = f"No such file or directory: '{_MISSING}'"


def test_same_start_error_is_printed_once_with_a_count():
    p = subprocess.run(pardo_cmd() + ["-j2", _MISSING, ":::", "1", "2", "3", "4"],
                       capture_output=True, timeout=60)
    assert p.returncode == 4
    assert p.stderr.decode().splitlines() == [
        f"pardo: {_WHY}", f"pardo: 3 more tasks could not start: {_WHY}"]


def test_every_task_failing_to_start_stops_early():
    inputs = "".join(f"{i}\n" for i in range(5000)).encode()
    p = subprocess.run(pardo_cmd() + ["-j2", "--joblog", "/dev/stdout", _MISSING],
                       input=inputs, capture_output=True, timeout=60)
    err = p.stderr.decode().splitlines()
    assert p.returncode == 255
    assert err[0] == f"pardo: {_WHY}"
    assert err[-1] == ("pardo: stopped: the first 10 tasks all could not start for the same "
                       "reason; fix the command and run again")
    assert len(err) == 3
    assert len(p.stdout.splitlines()) < 100  # joblog rows: it stopped, not 5000

