"""Shared fixtures: the compiled zoo, the survivor detector, CPU load, leak checks.

The zoo (tests/zoo/zoo.c) is compiled once per session into a world-readable temporary
directory, so that the unprivileged rung (user nobody) can run it too. Every zoo process
of a session carries a token that starts with the session's own prefix; at the end of
the session any process still carrying it is killed by pid, so a failed test cannot leave
the machine dirty (and every zoo process also arms its own alarm()).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ZOO_DIR = Path(__file__).parent / "zoo"
sys.path.insert(0, str(ZOO_DIR))
import audit  # noqa: E402

NOBODY = 65534


class Zoo:
    """The session's zoo: where its program is and how to make tokens.

    Attributes:
        dir: a 0755 temporary directory holding the program, driver.py and audit.py.
        bin: path of the compiled zoo program (its name is unique to the session).
        prefix: every token of the session starts with this.
    """

    def __init__(self, dir: Path, bin: Path, prefix: str):
        self.dir, self.bin, self.prefix = dir, bin, prefix

    def token(self) -> str:
        return f"{self.prefix}{secrets.token_hex(6)}"

    def env(self, token: str, **extra) -> dict:
        """Environment for a zoo process: the token, a PATH, and ``extra``."""
        return {"PARDO_ZOO_TOKEN": token, "PATH": "/usr/bin:/bin", **extra}

    def argv(self, mode: str, token: str, *args) -> list:
        return [str(self.bin), mode, token, *map(str, args)]


def _sweep(prefix: str) -> list:
    """Kill (by pid) every live process carrying a token with ``prefix``."""
    found = audit.token_processes(prefix)
    audit.kill_all(found)
    return found


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
        left = _sweep(z.prefix)
        shutil.rmtree(d, ignore_errors=True)
        if left:
            # Visible in the log; the tests that leaked have failed on their own audits.
            print(f"\nzoo: killed {len(left)} leftover zoo process(es) at session end: {left[:5]}")


@contextlib.contextmanager
def cpu_load(zoo: Zoo, procs: int | None = None):
    """Saturate every core with ``procs`` (default 2*nproc) busy loops while inside."""
    n = procs or 2 * (os.cpu_count() or 1)
    token = zoo.token()
    busy = [
        subprocess.Popen(zoo.argv("busy", token), env=zoo.env(token, PARDO_ZOO_ALARM="180"))
        for _ in range(n)
    ]
    try:
        time.sleep(0.1)  # let them get going
        yield busy
        dead = [p.pid for p in busy if p.poll() is not None]
        assert not dead, f"busy loops {dead} ended early: the load was not there throughout"
    finally:
        for p in busy:
            p.kill()
        for p in busy:
            p.wait()


@pytest.fixture
def loaded(zoo):
    """All cores busy for the duration of a test."""
    with cpu_load(zoo) as busy:
        yield busy


def _snapshot():
    return audit.fd_table(), {p for p, (s, _) in audit.children().items() if s != "Z"}


@pytest.fixture(scope="session")
def engine_started():
    """Start this process's supervisor once, so that the descriptors and helper
    processes it keeps for its lifetime exist before any leak snapshot."""
    import pardo

    r = pardo.run(["/bin/true"], timeout=10)
    assert r.status == "ok", r
    return pardo.isolation()


@pytest.fixture
def no_leaks(engine_started):
    """Fail the test if it leaves fds, live children or zombie children in this process.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("no_leaks")``.
    """
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
    """A PYTHONPATH under which user nobody can import pardo with /usr/bin/python3."""
    if os.geteuid() != 0:
        pytest.skip("the unprivileged rung is tested by switching to user nobody, which needs root")
    return copy_package_for_nobody(zoo.dir / "nobody")


def nobody_env(pythonpath, home) -> dict:
    """A minimal environment for a process run as nobody."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath), "HOME": str(home)}


def cgroup2_writable() -> str | None:
    """The reason this machine ought to offer the cgroup rung, or None: we are root and a
    cgroup2 mount is writable. Independent of pardo, to judge pardo's own report."""
    if os.geteuid() != 0:
        return None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] == "cgroup2":
                mnt, opts = fields[4], fields[5].split(",")
                if "rw" in opts and os.access(mnt, os.W_OK):
                    return f"root, and cgroup2 at {mnt} is writable"
    return None


def copy_package_for_nobody(dest: Path) -> Path:
    """Copy the installed pardo package (Python files, the compiled engine, the shepherd
    program) and any pure-Python dependency it imports into ``dest``, world-readable, so
    that user nobody can import it with Debian's /usr/bin/python3 (/root is 0700).

    Returns the directory to put on PYTHONPATH.
    """
    import importlib

    import pardo
    import pardo._engine

    site = dest / "site"
    site.mkdir(parents=True)
    pkg = Path(pardo.__file__).parent
    shutil.copytree(pkg, site / "pardo", ignore=shutil.ignore_patterns("__pycache__"))
    eng = Path(pardo._engine.__file__)
    if not (site / "pardo" / eng.name).exists():  # editable installs keep it elsewhere
        shutil.copy(eng, site / "pardo" / eng.name)
    if (eng.parent / "bin").is_dir() and not (site / "pardo" / "bin").exists():
        shutil.copytree(eng.parent / "bin", site / "pardo" / "bin")
    # Pull in whatever third-party module pardo imports that Debian's python lacks.
    for _ in range(10):
        _open_up(dest)
        probe = _as_nobody(["/usr/bin/python3", "-c", "import pardo"], site, dest)
        if probe.returncode == 0:
            break
        missing = _missing_module(probe.stderr)
        if missing is None:
            break
        mod = importlib.import_module(missing)
        src = Path(mod.__file__)
        if src.name == "__init__.py":
            shutil.copytree(src.parent, site / missing, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, site / src.name)
    _open_up(dest)
    return site


def _open_up(dest):
    """Make ``dest`` and everything under it readable (and searchable) by all."""
    for root, _dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)


def _missing_module(stderr: str):
    for line in stderr.splitlines():
        if line.startswith("ModuleNotFoundError: No module named "):
            return line.split("'")[1].split(".")[0]
    return None


def as_nobody_argv(argv: list) -> list:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def _as_nobody(argv, pythonpath, cwd):
    return subprocess.run(as_nobody_argv(argv), env=nobody_env(pythonpath, cwd), cwd=cwd,
                          capture_output=True, text=True)
