"""Launch throughput: /bin/true with nproc tasks in flight.

    python bench/spawn.py [--count 4000] [--reps 5] [--rungs auto,cgroup,shepherd,pgroup]
                          [--kernel 4.18|5.4|5.10|docker]

Rows, each measured ``--reps`` times, interleaved so that drifts in machine speed hit
every row alike; the table shows medians and each row's ratio to the floor's median
from this same invocation:

- floor: ``_floor.c``, a C loop keeping nproc ``posix_spawn`` + ``waitpid`` in flight
  (the fastest way to run programs; no capture, no deadline, no isolation);
- floor + capture: the same with stdout and stderr read from a pipe until EOF;
- pardo: ``pardo.spawn(["/bin/true"], timeout=60, queue=q)`` with
  ``q = ResultQueue(max_running=nproc)`` kept 32 tasks per slot ahead (as ``pardo run``
  does) and drained in batches with ``q.get_many(min_items=..., max_delay=0.02)`` -- output
  captured, a deadline armed, the isolation rung in force --
  once with the rung pardo picks by itself ("auto") and once per rung forced through
  ``PARDO_ISOLATION``, each in a fresh process;
- threads: a ``ThreadPoolExecutor`` of nproc threads each calling
  ``subprocess.run(capture_output=True, timeout=60)``, what one writes without pardo.

``--kernel PROFILE`` runs every row (the floor too, so that the filter's cost per system
call is in both) under tests/engine/kernel_profile.c, which answers as that kernel or as
Docker's default seccomp profile: the cost of the start paths older kernels get (clone
instead of clone3 under 4.18 and docker). Under 5.4 each clone3 also makes a round trip
through the launcher's user-space listener, which a real 5.4 does not pay.

Target: pardo >= 0.9x the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TARGET = 0.9
TRUE = "/bin/true"
PREFIX: list[str] = []  # the kernel-profile launcher and its profile, with --kernel


def _launcher() -> str:
    """Compile tests/engine/kernel_profile.c into bench/.build (once per source)."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "engine",
                       "kernel_profile.c")
    exe = os.path.join(C.BUILD_DIR, "kernel_profile")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        os.makedirs(C.BUILD_DIR, exist_ok=True)
        subprocess.run(["gcc", "-O1", "-o", exe, src], check=True)
    return exe


def _children(pid: int) -> list[str]:
    """The children of every thread of ``pid`` (none once it is gone)."""
    out: list[str] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += f.read().split()
        except OSError:
            continue
    return out


def _cpu() -> float:
    """CPU seconds used so far by this process, the children it reaped, and every live
    descendant with what it reaped. Live descendants count: on the shepherd rung pardo's
    launcher and its kept keepers live as long as pardo does, and the keepers reap the
    tasks, so the tasks' CPU reaches this process only when those exit. Each second is
    counted once: in the process that used it while that lives, then in the one that
    reaped it."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    todo = _children(os.getpid())
    while todo:
        child = todo.pop()
        try:
            with open(f"/proc/{child}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime (fields 14-17 of stat; after "(comm)": 12-15)
        total += sum(int(x) for x in fields[11:15]) / tick
        todo += _children(int(child))
    return total


def pardo_worker(count: int, inflight: int) -> dict:
    """Run ``count`` tasks through pardo.spawn with ``inflight`` running at a time.

    ``ResultQueue(max_running=inflight)`` keeps exactly ``inflight`` tasks running: the
    engine starts the next one itself when one ends, and this loop keeps a few more handed
    over ahead of time (they wait inside the engine, not yet started)."""
    import pardo

    q = pardo.ResultQueue(max_running=inflight)
    pardo.run([TRUE], timeout=60)  # start the supervisor outside the timing
    bad = []
    ahead = 32 * inflight  # running + waiting in the engine (as `pardo run` does)
    cpu0 = _cpu()
    t0 = time.perf_counter()
    started = done = 0
    while done < count:
        while started < count and started - done < ahead:
            pardo.spawn([TRUE], timeout=60, queue=q)
            started += 1
        # Wake once per batch of results: the engine keeps the slots busy meanwhile.
        for task in q.get_many(min_items=16 * inflight, max_delay=0.02):
            done += 1
            if task.result.status != "ok" and len(bad) < 3:
                bad.append(repr(task.result))
    elapsed = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    return {"elapsed": elapsed, "cpu": cpu, "rung": str(pardo.isolation()), "bad": bad}


def threads_worker(count: int, inflight: int) -> dict:
    """Run ``count`` subprocess.run calls on a pool of ``inflight`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        return subprocess.run(
            [TRUE], stdin=subprocess.DEVNULL, capture_output=True, timeout=60
        ).returncode

    with ThreadPoolExecutor(inflight) as ex:
        one(0)  # warm the imports and the pool's first thread outside the timing
        cpu0 = _cpu()
        t0 = time.perf_counter()
        codes = list(ex.map(one, range(count)))
        elapsed = time.perf_counter() - t0
        cpu = _cpu() - cpu0
    bad = [f"exit {c}" for c in codes if c][:3]
    return {"elapsed": elapsed, "cpu": cpu, "bad": bad}


def _worker_cmd(kind: str, count: int, inflight: int) -> list[str]:
    return [
        sys.executable, os.path.abspath(__file__), "--worker", kind,
        "--count", str(count), "--inflight", str(inflight),
    ]  # fmt: skip


def measure(row: str, count: int, inflight: int) -> tuple[float, float, str | None]:
    """One repetition of one row in a fresh process.

    Returns:
        (elapsed seconds, CPU seconds of the launcher and its tasks, isolation rung for
        pardo rows else None).

    Raises:
        RuntimeError: the row's process failed or some task did not exit 0.
    """
    env = dict(os.environ)
    if row.startswith("floor"):
        cmd = PREFIX + [str(C.compile_c("_floor"))] + (["-c"] if row == "floor+capture" else [])
        p = subprocess.run(cmd + ["-a", "300", str(inflight), str(count), TRUE],
                           stdout=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
        if p.returncode:
            raise RuntimeError(f"{row} exited {p.returncode}")
        _count, elapsed, cpu = p.stdout.split()
        return float(elapsed), float(cpu), None
    if row.startswith("pardo"):
        rung = row.partition(":")[2]
        if rung != "auto":
            env["PARDO_ISOLATION"] = rung
        cmd = _worker_cmd("pardo", count, inflight)
    else:
        cmd = _worker_cmd("threads", count, inflight)
    p = subprocess.run(PREFIX + cmd, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode:
        # The last line says why: e.g. a rung this kernel cannot have, refused by pardo.
        why = (p.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"{row} exited {p.returncode}: {why}")
    r = json.loads(p.stdout)
    if r["bad"]:
        raise RuntimeError(f"{row}: tasks did not exit 0: {r['bad']}")
    return r["elapsed"], r["cpu"], r.get("rung")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=4000, help="tasks per repetition")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per row")
    ap.add_argument("--inflight", type=int, default=C.nproc(), help="tasks in flight")
    ap.add_argument(
        "--rungs", default="auto,cgroup,shepherd,pgroup",
        help="pardo rows: 'auto' (the rung pardo picks) and/or rungs to force",
    )  # fmt: skip
    ap.add_argument("--kernel", help="run every row as if on this kernel (4.18, 5.4, 5.10, docker)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        C.arm_alarm(600)
        fn = pardo_worker if a.worker == "pardo" else threads_worker
        json.dump(fn(a.count, a.inflight), sys.stdout)
        return

    C.arm_alarm(3600)
    C.compile_c("_floor")
    if a.kernel:
        PREFIX[:] = [_launcher(), a.kernel]
    rows = ["floor", "floor+capture"] + [f"pardo:{r}" for r in a.rungs.split(",") if r]
    rows.append("threads")
    times: dict[str, list[float]] = {r: [] for r in rows}
    cpus: dict[str, list[float]] = {r: [] for r in rows}
    # Ratios are paired: each row's time against the floor's time of the same repetition,
    # measured moments apart, so drifts in machine speed cancel out.
    ratios: dict[str, list[float]] = {r: [] for r in rows}
    rung_of: dict[str, str] = {}
    errors: dict[str, str] = {}
    print(
        f"spawn.py: {a.count} x {TRUE}, {a.inflight} in flight, {a.reps} repetitions "
        f"per row, interleaved" + (f", as kernel {a.kernel}" if a.kernel else ""),
        flush=True,
    )
    for rep in range(a.reps):
        for row in rows:
            if row in errors:
                continue
            try:
                elapsed, cpu, rung = measure(row, a.count, a.inflight)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                errors[row] = str(e)
                continue
            times[row].append(elapsed)
            cpus[row].append(cpu)
            if len(times["floor"]) == rep + 1:
                ratios[row].append(times["floor"][rep] / elapsed)
            if rung:
                rung_of[row] = rung
        print(f"  repetition {rep + 1}/{a.reps} done", file=sys.stderr, flush=True)

    table = []
    for row in rows:
        name = row
        if row.startswith("pardo"):
            asked = row.partition(":")[2]
            rung = rung_of.get(row, asked)
            name = f"pardo ({rung}{', auto' if asked == 'auto' and rung != 'auto' else ''})"
        if row in errors or not times[row]:
            table.append([name, "failed", "", "", "", ""])
            continue
        med = C.median(times[row])
        spread = f"{a.count / max(times[row]):.0f}..{a.count / min(times[row]):.0f}"
        ratio = C.median(ratios[row]) if ratios[row] else float("nan")
        cpu = C.median(cpus[row])
        cpu_ratio = C.median(cpus["floor"]) / cpu if cpus["floor"] else float("nan")
        table.append([name, a.count / med, spread, ratio, cpu / a.count * 1e6, cpu_ratio])
    print()
    headers = ["row", "tasks/s", "range", "x floor", "CPU us/task", "x floor CPU"]
    C.print_table(headers, table)
    print(
        "\nx floor: median over repetitions of floor time / row time, each pair measured "
        "back to back.\nCPU: user+system time of the launcher and of its tasks, per task. "
        "x floor CPU: floor CPU / row CPU;\nwith nproc tasks in flight on nproc CPUs the work "
        "is CPU-bound, so this is the throughput\nratio to expect on a quiet machine, and "
        "outside load barely moves it."
    )
    print()
    for row in rows:
        if row.startswith("pardo") and row not in errors and ratios[row]:
            ratio = C.median(ratios[row])
            verdict = "meets" if ratio >= TARGET else "MISSES"
            print(f"{row}: {ratio:.2f}x the floor -> {verdict} the target (>= {TARGET}x)")
        elif row in errors:
            print(f"{row}: FAILED: {errors[row]}")


if __name__ == "__main__":
    main()
