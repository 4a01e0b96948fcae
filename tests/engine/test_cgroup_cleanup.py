"""A finished run leaves no cgroup behind: neither its own subtree nor the shared `pardo`
directory it made. Each case runs pardo in a process placed in a private cgroup, so that
the test's own supervisor (or any other) cannot keep that directory in use."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest


def _cgroup2_home():
    with open("/proc/self/mountinfo") as f:
        mnt = next((pre.split()[4] for pre, _, post in (ln.partition(" - ") for ln in f)
                    if post.split()[0] == "cgroup2"), None)
    if mnt is None:
        return None
    with open("/proc/self/cgroup") as f:
        home = next(ln[3:].strip() for ln in f if ln.startswith("0::"))
    return mnt + ("" if home == "/" else home)


def _remove_tree(path):
    """Kill what is in a cgroup tree and remove it, leaves first."""
    with open(os.path.join(path, "cgroup.kill"), "w") as f:
        f.write("1")
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(path)


@pytest.fixture
def private_cgroup():
    home = _cgroup2_home()
    if home is None or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup2 mount to make a private cgroup")
    path = os.path.join(home, f"pardo-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        time.sleep(0.1)  # the child has left; its cgroup empties as it is reaped
        _remove_tree(path)


CHILD = """
import os, signal, sys
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write("0")
import pardo
assert pardo.isolation() == "cgroup"
assert pardo.run(["sh", "-c", "sleep 30 & echo started"]).stdout == b"started\\n"
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_run_removes_its_cgroups(private_cgroup, how):
    proc = subprocess.run([sys.executable, "-c", CHILD, private_cgroup, how], timeout=60)
    assert proc.returncode == (0 if how == "exit" else -signal.SIGKILL)
    left = os.path.join(private_cgroup, "pardo")
    deadline = time.monotonic() + 5  # after SIGKILL the guardian cleans up, asynchronously
    while os.path.exists(left) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(left)
