"""--line-buffer on long lines: whole lines out, in time linear in the output."""

import subprocess
import sys

import pytest

from pardo_cli import pardo_cmd


def test_a_long_line_without_newline_is_linear(tmp_path):
    # 100 MB in one line arrives in 64 KiB reads. Re-joining the pending part on every read
    # copied it each time: about 80 GB of copying here, minutes; linear work takes a second.
    # The deadline only separates the two by a wide margin: bench/ measures the speed.
    size = 100_000_000
    out = tmp_path / "out"
    with open(out, "wb") as f:
        p = subprocess.run(pardo_cmd() + ["--line-buffer", "--tag",
                                          f"head -c {size} /dev/zero | tr '\\0' x; echo; echo {{}}",
                                          ":::", "v"],
                           stdout=f, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 0, p.stderr
    with open(out, "rb") as f:
        first = f.read(2 + 10)
        f.seek(0, 2)
        total = f.tell()
        f.seek(-8, 2)
        tail = f.read()
    assert first == b"v\t" + b"x" * 10
    assert total == 2 + size + 1 + 4
    assert tail == b"xxx\nv\tv\n"


MEASURE = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
sys.stderr.buffer.write(p.stderr)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss << 10)
"""


@pytest.mark.parametrize("ending", ["; echo", ""], ids=["newline", "eof"])
def test_a_long_line_is_held_once(ending):
    # A 150 MB line, ended by a newline or by the task's end: pardo holds it until it is
    # whole, once. Handing the sink a bytes copy of the pending buffer held it twice
    # (pardo's peak ~330 MB here; now ~170 MB).
    size = 150_000_000
    cmd = pardo_cmd() + ["--line-buffer", f"head -c {size} /dev/zero{ending}; : {{}}", ":::", "v"]
    p = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True,
                       timeout=60)
    code, peak = map(int, p.stdout.split())
    assert code == 0, p.stderr
    assert size < peak < size * 1.4, f"peak RSS {peak >> 20} MiB for a {size >> 20} MiB line"
