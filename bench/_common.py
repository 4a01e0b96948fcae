"""Shared helpers for the benchmarks in bench/.

- ``compile_c``: builds a C helper from bench/ into bench/.build/ with gcc, once per
  source version (the binary name carries a hash of source and flags).
- ``median`` / ``percentile`` / ``print_table``: the numbers a benchmark prints. Every
  figure is a median over repetitions and every ratio compares two figures measured in
  the same run, because this machine is noisy and absolute numbers do not travel.
- ``BusyLoad``: 2*nproc (or any number of) busy-loop processes to saturate the CPUs.
  Each arms ``alarm()`` so a crashed benchmark cannot leave them spinning, and they are
  killed by pid when the ``with`` block ends.
- ``new_token`` / ``pids_with_token`` / ``kill_pids``: find the processes a benchmark
  started by a unique token in their argv, and end exactly those.
- ``arm_alarm``: every benchmark driver process bounds its own lifetime too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
BUILD_DIR = BENCH_DIR / ".build"
CFLAGS = ("-O2", "-Wall", "-Wextra")


def nproc() -> int:
    """CPUs this process may run on (what "nproc in flight" means)."""
    return len(os.sched_getaffinity(0))


def arm_alarm(seconds: int) -> None:
    """Bound this process's lifetime: SIGALRM's default action terminates it."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(seconds)


def compile_c(name: str, extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile ``bench/<name>.c`` into ``bench/.build/`` unless already built.

    Args:
        name: source file stem, e.g. ``"_floor"``.
        extra_flags: more gcc flags; they are part of the cache key.

    Returns:
        Path of the executable. A stable symlink ``bench/.build/<name>`` points at it
        so that other scripts (and humans) can find the latest build.

    Raises:
        subprocess.CalledProcessError: gcc failed (its output is on stderr).
    """
    src = BENCH_DIR / f"{name}.c"
    flags = CFLAGS + tuple(extra_flags)
    digest = hashlib.sha256(src.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    BUILD_DIR.mkdir(exist_ok=True)
    exe = BUILD_DIR / f"{name}-{digest}"
    if not exe.exists():
        # Build under a temporary name and rename, so a concurrent benchmark never
        # runs a half-written binary.
        tmp = exe.with_name(f"{exe.name}.{os.getpid()}.tmp")
        subprocess.run(["gcc", *flags, "-o", str(tmp), str(src)], check=True)
        os.replace(tmp, exe)
    link = BUILD_DIR / name
    with contextlib.suppress(OSError):  # absent, or not a symlink
        if os.readlink(link) == exe.name:
            return exe
    tmp_link = BUILD_DIR / f"{name}.{os.getpid()}.lnk"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(exe.name)
    os.replace(tmp_link, link)
    return exe


def median(xs: list[float]) -> float:
    """Median of a non-empty list."""
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list.

    Nearest rank rather than interpolation: with 60 samples p99 is the worst sample,
    which is the honest reading of "99% of deadlines were met within".
    """
    s = sorted(xs)
    rank = max(1, -(-len(s) * p // 100))  # ceil(n * p / 100), at least 1
    return s[int(rank) - 1]


def print_table(headers: list[str], rows: list[list[object]], file=None) -> None:
    """Print a plain aligned table (no dependency, readable in CI logs)."""
    file = file or sys.stdout
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        line = "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        )
        print(line.rstrip(), file=file)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=file)
    file.flush()


def _fmt(c: object) -> str:
    if isinstance(c, float):
        if c == 0 or abs(c) >= 100:
            return f"{c:.0f}"
        if abs(c) >= 1:
            return f"{c:.2f}"
        return f"{c:.3f}"
    return str(c)


def new_token(prefix: str = "pardobench") -> str:
    """A string unique to one benchmark run, to be put in the argv of what it starts."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def pids_with_token(token: str) -> list[int]:
    """Live processes whose argv contains ``token`` as one whole argument.

    Zombies have no argv (the kernel drops the mm at exit), so they are not listed:
    a zombie is dead, and reaping it is its parent's business.
    """
    needle = token.encode()
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if needle in argv:
            found.append(pid)
    return found


def zombies_named(comm: str) -> dict[int, int]:
    """Zombie processes whose comm (first 15 bytes of the program name) is ``comm``.

    Returns:
        {pid: parent pid}: a zombie of PID 1 waits for init to reap it; one of any other
        parent is that parent's leak.
    """
    comm = comm[:15]
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        state, ppid = stat[stat.rfind(")") + 2 :].split(" ", 2)[:2]
        if name == comm and state == "Z":
            found[int(entry.name)] = int(ppid)
    return found


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to each pid; ones already gone are skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_token(token: str, rounds: int = 20) -> int:
    """SIGKILL every process carrying ``token`` until none is left.

    Repeats because a tree may fork between the scan and the kill.

    Returns:
        How many distinct pids were found (and killed) in total.
    """
    seen: set[int] = set()
    for _ in range(rounds):
        pids = pids_with_token(token)
        if not pids:
            break
        seen.update(pids)
        kill_pids(pids)
    return len(seen)


class BusyLoad:
    """``n`` processes spinning on the CPU for the duration of a ``with`` block.

    Args:
        n: how many busy loops; 0 makes this a no-op (the "idle" case).
        max_seconds: each loop arms ``alarm(max_seconds)`` and dies by itself then,
            whatever happens to the benchmark.
    """

    def __init__(self, n: int, max_seconds: int = 600):
        self.n = n
        self.max_seconds = max_seconds
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> BusyLoad:
        if self.n:
            exe = compile_c("_busy")
            self.procs = [
                subprocess.Popen([str(exe), str(self.max_seconds)], stdin=subprocess.DEVNULL)
                for _ in range(self.n)
            ]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait()
        self.procs = []
