"""Shared fixtures: the compiled zoo, the engine started once, leak checks, and the
package copy that lets user nobody import pardo.

The zoo (tests/zoo/zoo.c) is compiled once per session into a world-readable temporary
directory, so that the unprivileged rung (user nobody) can run it too. Every zoo process
of a session carries a token that starts with the session's own prefix; at the end of
the session any process still carrying it is killed by pid, so a failed test cannot leave
the machine dirty (and every zoo process also arms its own alarm()).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ZOO_DIR = Path(__file__).parent / "zoo"
# Test modules import the zoo's audit helpers and tests/helpers by name.
sys.path.insert(0, str(ZOO_DIR))
sys.path.insert(0, str(Path(__file__).parent / "helpers"))
# Pool tests send module-level functions to worker processes by reference, and
# --import-mode=importlib names test modules from the repository root
# (tests.pool.test_pool_contract): a worker imports them from there, whatever the
# current directory. (The root holds no pardo package: it is under src/.)
sys.path.insert(0, str(Path(__file__).parent.parent))
import audit  # noqa: E402
from support import SYSTEM_PYTHON, Zoo, copy_package_for_nobody, sweep  # noqa: E402


@pytest.fixture(scope="session")
def zoo():
    """Compile the zoo into a world-readable temp dir; sweep its processes at the end."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the zoo (tests/zoo/zoo.c)")
    d = Path(tempfile.mkdtemp(prefix="pardo-zoo-"))
    d.chmod(0o755)
    hexid = secrets.token_hex(3)
    binary = d / f"pzoo_{hexid}"
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-o", str(binary), str(ZOO_DIR / "zoo.c")],
        check=True, capture_output=True,
    )
    binary.chmod(0o755)
    for name in ("driver.py", "audit.py"):
        shutil.copy(ZOO_DIR / name, d / name)
        (d / name).chmod(0o644)
    z = Zoo(d, binary, prefix=f"pzt{hexid}x")
    try:
        yield z
    finally:
        left = sweep(z.prefix)
        shutil.rmtree(d, ignore_errors=True)
        if left:
            # Visible in the log; the tests that leaked have failed on their own audits.
            print(f"\nzoo: killed {len(left)} leftover zoo process(es) at session end: {left[:5]}")


def _snapshot():
    return audit.fd_table(), {p for p, (s, _) in audit.children().items() if s != "Z"}


@pytest.fixture(scope="session")
def engine_started():
    """Start this process's supervisor once, so that the descriptors and helper
    processes it keeps for its lifetime exist before any leak snapshot."""
    import pardo

    r = pardo.run(["/bin/true"], timeout=10)
    assert r.status == "ok", r
    # The cgroup rung keeps a leaf per task in flight, with its fds, for reuse: warm a few
    # so that the first test to run several tasks at once does not look like an fd leak.
    for t in [pardo.spawn(["/bin/sleep", "0.2"]) for _ in range(6)]:
        t.wait(30)
    return pardo.isolation()


@pytest.fixture
def pool(engine_started):
    """A two-worker process pool, shut down after the test."""
    import pardo

    with pardo.Pool(2) as p:
        yield p


@pytest.fixture(autouse=True)
def _leak_check(request):
    """Every test runs under ``no_leaks``: nearly all of them start processes, through
    pardo or directly. A test that legitimately keeps a process or descriptor alive past
    its end says so with ``@pytest.mark.no_leak_check(reason="...")``."""
    marker = request.node.get_closest_marker("no_leak_check")
    if marker is None:
        request.getfixturevalue("no_leaks")
    elif not marker.kwargs.get("reason"):
        pytest.fail("no_leak_check needs a reason= that says what stays alive and why")
    yield


@pytest.fixture
def no_leaks(engine_started):
    """Fail the test if it leaves fds, live children or zombie children in this process."""
    fds0, kids0 = _snapshot()
    yield
    zombies = audit.zombie_children()
    kids = {p: v for p, v in audit.children().items() if p not in kids0 and v[0] != "Z"}
    # Give asynchronous closes (the supervisor thread) a short moment.
    deadline = time.monotonic() + 1.0
    while True:
        leaks = audit.fd_leaks(fds0, audit.fd_table())
        if not leaks or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not zombies, f"zombie children left: {zombies}"
    assert not kids, f"live children left: {kids}"
    assert not leaks, f"leaked fds: {leaks}"


@pytest.fixture(scope="session")
def nobody_pythonpath(zoo):
    """A PYTHONPATH under which user nobody can import pardo with SYSTEM_PYTHON."""
    if os.geteuid() != 0:
        pytest.skip("the unprivileged rung is tested by switching to user nobody, which needs root")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is needed to test pardo as user nobody (.ci/run installs it)")
    return copy_package_for_nobody(zoo.dir / "nobody")
