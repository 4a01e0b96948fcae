"""What a new user reads first: help without markup, a demo command that runs as printed."""

import os
import subprocess
import sys

import pytest

_PARDO = [sys.executable, "-m", "pardo"]


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["doctor", "--help"],
                                  ["demo", "--help"]])
def test_help_has_no_restructuredtext_markup(args):
    p = subprocess.run(_PARDO + args, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    assert p.stdout.strip()
    for markup in ("``", ":class:", ":func:", ":meth:"):
        assert markup not in p.stdout


def test_demo_prints_a_command_that_runs_as_printed(tmp_path):
    demo = subprocess.run(_PARDO + ["demo"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    lines = demo.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("$ pardo run "))
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    command = "\n".join(lines[start:end + 1])[2:]
    assert "..." not in command
    # the printed command, pasted into a shell, with this interpreter's pardo first on PATH
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pardo").write_text(f"#!/bin/sh\nexec {sys.executable} -m pardo \"$@\"\n")
    (bindir / "pardo").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=env)
    assert p.returncode == 4, p.stderr  # as in the demo: 4 snippets do not succeed
    rows = (tmp_path / "joblog.tsv").read_text().splitlines()
    assert len(rows) == 17  # header + 16 snippets
    assert "16 joblog rows" in demo.stdout
