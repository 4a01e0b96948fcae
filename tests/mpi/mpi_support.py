"""Running real ``mpiexec`` jobs in tests: each in its own process group, bounded by a
timeout, and the whole group killed afterwards whatever happened."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
PARDO = str(BIN / "pardo")


def env():
    e = dict(os.environ)
    e["PATH"] = f"{BIN}:{e.get('PATH', '/usr/bin:/bin')}"
    return e


def descendants(root):
    """Pids of every live process below ``root`` (Hydra puts each rank in a session of its
    own, so a process group does not hold them)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            parent[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [root]
    while frontier:
        p = frontier.pop(0)  # breadth first: parents before their children
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def rank_pid(root, rank):
    """Pid of MPI rank ``rank`` of the mpiexec ``root``: the shallowest process below it
    with Hydra's PMI_RANK (its tasks inherit that variable too)."""
    for pid in descendants(root):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in environ:
            return pid
    return None


@contextlib.contextmanager
def started(argv, **kw):
    """Popen in a new session; it and every process below it are SIGKILLed on the way
    out, whatever happened."""
    p = subprocess.Popen(argv, start_new_session=True, env=env(), **kw)
    try:
        yield p
    finally:
        below = descendants(p.pid) if p.poll() is None else []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.wait()
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


def mpirun(n, args, *, timeout=60, input=None, cwd=None):
    """``mpiexec -n N ARGS`` (n=None: ARGS alone); a CompletedProcess with bytes output."""
    argv = ([MPIEXEC, "-n", str(n)] if n is not None else []) + list(args)
    with started(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd) as p:
        out, err = p.communicate(input, timeout=timeout)
        return subprocess.CompletedProcess(argv, p.returncode, out, err)


def joblog_rows(path):
    """{seq: (host, exitval, signal, command)} of a joblog."""
    rows = {}
    for line in Path(path).read_text().splitlines()[1:]:
        c = line.split("\t", 8)
        rows[int(c[0])] = (c[1], int(c[6]), int(c[7]), c[8])
    return rows
