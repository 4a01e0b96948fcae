"""engine/clone.S, run: its children start on the stack given, run fn(arg), and exit with
its value, through clone() (where clone3 is refused: Linux < 5.3, Docker's default seccomp
profile) and clone3(), fork-style and vfork-style. On this machine, and for aarch64 under
qemu's user-mode emulation (qemu answers clone3 with ENOSYS, so there only clone() runs)."""

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CLONE_S = HERE.parent.parent / "engine" / "clone.S"


def _build_and_run(tmp_path, cc, prefix=()):
    exe = tmp_path / f"clone_run_{Path(cc).name}"
    subprocess.run([cc, "-static", "-O1", "-o", str(exe), str(HERE / "clone_run.c"), str(CLONE_S)],
                   check=True, timeout=120)
    p = subprocess.run([*prefix, str(exe)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_clone_s_on_this_machine(tmp_path):
    lines = _build_and_run(tmp_path, "gcc")
    assert lines == ["clone exit 42", "clone-vfork exit 42", "clone3 exit 42"], lines


@pytest.mark.skipif(platform.machine() != "x86_64", reason="aarch64 runs natively above")
def test_clone_s_on_aarch64_under_qemu(tmp_path):
    # .ci/run installs both (gcc-aarch64-linux-gnu, qemu-user-static)
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64-static")
    assert cc and qemu, "aarch64-linux-gnu-gcc and qemu-aarch64-static are needed"
    lines = _build_and_run(tmp_path, cc, (qemu,))
    assert lines[:2] == ["clone exit 42", "clone-vfork exit 42"], lines
    assert lines[2] in ("clone3 exit 42", "clone3 failed -38"), lines  # -ENOSYS under qemu
