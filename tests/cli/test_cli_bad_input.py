"""Bad input gets a one-line error and exit 255: never a traceback, never a silent meaning."""

import subprocess

import pytest

import pardo
from pardo._errors import BatchError

from pardo_cli import pardo_cmd


@pytest.mark.parametrize("args,message", [
    (["--colsep", "[", "echo", ":::", "a"], "pardo run: --colsep: '[' is not a regular expression"),
    (["--timeout", "-1", "echo", ":::", "a"], "pardo run: --timeout: '-1' is negative"),
    (["--timeout", "-5%", "echo", ":::", "a"], "pardo run: --timeout: '-5%' must be a positive"),
])
def test_cli_rejects_in_one_line(args, message):
    p = subprocess.run(pardo_cmd() + args, capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 255
    assert err.startswith(message)
    assert err.count("\n") == 1, err
    assert p.stdout == b""


def test_map_commands_rejects_before_running_anything(tmp_path):
    with pytest.raises(BatchError, match="--colsep"):
        pardo.map_commands(f"touch {tmp_path}/ran", ["a"], colsep="[")
    with pytest.raises(BatchError, match="negative"):
        list(pardo.map_commands(f"touch {tmp_path}/ran", ["a"], timeout=-1))
    assert not (tmp_path / "ran").exists()

