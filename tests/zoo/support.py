"""Helpers the zoo tests share: the session's zoo, CPU load, the unprivileged rung.

The fixtures that use them are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import audit

NOBODY = 65534
# The interpreter user nobody runs: the system's build of our Python version (the compiled
# engine must match it), since a pyenv or venv interpreter under /root is not readable.
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"


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


def sweep(prefix: str) -> list:
    """Kill (by pid) every live process carrying a token with ``prefix``."""
    found = audit.token_processes(prefix)
    audit.kill_all(found)
    return found


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


class DriverHung(Exception):
    """A zoo driver outlived its timeout (its session was killed); args[0] is its stderr."""


def run_zoo_driver(argv, env, cwd, timeout) -> tuple[int, bytes, bytes]:
    """Run a zoo driver (tests/zoo/driver.py) in a session of its own.

    Returns:
        (returncode, stdout, stderr).

    Raises:
        DriverHung: it ran past ``timeout`` seconds; its whole session was killed.
    """
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # our own driver's session
        out, err = p.communicate()
        raise DriverHung(err.decode(errors="replace")[-3000:]) from None
    return p.returncode, out, err


@contextlib.contextmanager
def supervisor_owner(argv, env, cwd, script, token):
    """Start a script that owns pardo task trees carrying ``token`` and prints a line once
    they are under way. Whatever happens inside, it is killed afterwards, ``script``
    removed and every process carrying ``token`` killed.

    Yields:
        (the Popen, the words of its first line).
    """
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 60)
        assert ready, "the supervisor process never reported its tasks"
        yield p, p.stdout.readline().split()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
        script.unlink()
        audit.kill_all(audit.token_processes(token))


def wait_for_processes(token, count, timeout=5.0) -> list:
    """The processes carrying ``token``, once there are ``count`` (or ``timeout`` passed)."""
    end = time.monotonic() + timeout
    while len(audit.token_processes(token)) < count and time.monotonic() < end:
        time.sleep(0.02)
    return audit.token_processes(token)


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
    that user nobody can import it with SYSTEM_PYTHON (/root is 0700).

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
        probe = _as_nobody([SYSTEM_PYTHON, "-c", "import pardo"], site, dest)
        if probe.returncode == 0:
            break
        missing = _missing_module(probe.stderr)
        if missing is None:
            break
        mod = importlib.import_module(missing)
        src = Path(mod.__file__)
        if src.name == "__init__.py":
            shutil.copytree(src.parent, site / missing,
                            ignore=shutil.ignore_patterns("__pycache__"))
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


def python_script(script: str, args=(), *, nobody: bool, request, zoo) -> tuple[list, dict]:
    """(argv, env) running ``script`` in a fresh Python: this one with our environment, or
    (``nobody``) the system's as user nobody, with pardo importable from the zoo's copy."""
    if not nobody:
        return [sys.executable, "-c", script, *args], dict(os.environ)
    return (as_nobody_argv([SYSTEM_PYTHON, "-c", script, *args]),
            nobody_env(request.getfixturevalue("nobody_pythonpath"), zoo.dir))


def _as_nobody(argv, pythonpath, cwd):
    return subprocess.run(as_nobody_argv(argv), env=nobody_env(pythonpath, cwd), cwd=cwd,
                          capture_output=True, text=True)
