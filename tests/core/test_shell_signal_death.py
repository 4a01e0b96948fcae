"""A command run through the shell that dies of a signal reads as that signal, not as
128+N: the shell's last command takes the shell's place."""

import resource
import subprocess
import sys

import pytest

import pardo

# `sh -c 'kill -SEGV $$'` is a program (a second shell) that dies of SIGSEGV; run through
# pardo's own sh -c, that sh used to fork it and then exit 139 itself.
_SEGV = "sh -c 'kill -SEGV $$'"


@pytest.fixture(autouse=True)
def _no_core_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    yield
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


@pytest.mark.parametrize("command", [_SEGV, _SEGV + " > /dev/null 2>&1", _SEGV + " </dev/null"])
def test_run_shell_reports_the_signal(command):
    r = pardo.run(command, shell=True, timeout=30)
    assert (r.status, r.signal, r.returncode) == ("signaled", 11, None)


def test_shell_syntax_still_works():
    r = pardo.run("X=1; echo $X | tr 1 2 && exit 3", shell=True, timeout=30)
    assert (r.status, r.returncode, r.stdout) == ("failed", 3, b"2\n")
    r = pardo.run("cd / && pwd", shell=True, timeout=30)
    assert r.stdout == b"/\n"


def test_map_commands_shell_path_reports_the_signal():
    # the quoted value makes the command need a shell
    (r,) = pardo.map_commands("sh -c 'kill -SEGV $$; : {}'", ["a b"])
    assert (r.status, r.signal) == ("signaled", 11)


def test_cli_joblog_shows_signal_11(tmp_path):
    log = tmp_path / "log"
    exe = [sys.executable, "-m", "pardo", "run"]
    p = subprocess.run(exe + ["--joblog", str(log), "sh -c 'kill -SEGV $$; : {}'", ":::", "a b"],
                       capture_output=True, timeout=60)
    assert p.returncode == 1
    row = log.read_text().splitlines()[1].split("\t")
    assert (row[6], row[7]) == ("0", "11")  # Exitval, Signal: as GNU parallel logs it
