"""--bar/--eta know the total when inputs come from files; plain lines off a terminal."""

import os
import pty
import subprocess

from pardo_cli import pardo_cmd


def _inputs(tmp_path, n):
    f = tmp_path / "inputs"
    f.write_text("".join(f"{i}\n" for i in range(n - 1)) + "last")  # no final newline
    return f


def test_bar_off_a_terminal_prints_gnu_plain_progress_lines(tmp_path):
    f = _inputs(tmp_path, 8)
    p = subprocess.run(pardo_cmd() + ["-j2", "--bar", ": {}", "::::", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    lines = p.stderr.splitlines()
    assert "100" in lines
    assert lines[lines.index("100") + 1].endswith("8/8 done, ETA 0s")
    assert [ln for ln in lines if not ln.startswith("#")] == [
        str(100 * k // 8) for k in range(1, 9)]


def test_bar_counts_arg_file_inputs_with_a_delimiter(tmp_path):
    f = tmp_path / "inputs"
    f.write_bytes(b"a\0b\0c\0")
    p = subprocess.run(pardo_cmd() + ["-0", "--bar", "-a", str(f), ":"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    assert p.stderr.splitlines()[-1].endswith("3/3 done, ETA 0s")


def test_bar_on_a_terminal_shows_total_and_percentage(tmp_path):
    f = _inputs(tmp_path, 8)
    master, slave = pty.openpty()
    with os.fdopen(master, "rb", buffering=0) as term:
        try:
            p = subprocess.Popen(pardo_cmd() + ["-j2", "--bar", ": {}", "::::", str(f)],
                                 stdout=subprocess.DEVNULL, stderr=slave)
        finally:
            os.close(slave)
        # read as pardo draws (a full terminal would stop it); EIO once it has exited
        drawn = b"".join(iter(lambda: _read_or_empty(term), b""))
        assert p.wait(timeout=60) == 0
    assert b"8/8 100%" in drawn


def _read_or_empty(term):
    try:
        return term.read(65536)
    except OSError:
        return b""
