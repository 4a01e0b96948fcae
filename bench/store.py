"""The job store: how fast its writer thread records tasks, how big a million tasks of
`true` make it, and how fast `pardo status` reads it.

Rows are the records a run of `true` produces (status ok, exit 0, no output, the
figures of a real `pardo.run(["true"])`, a distinct seq and input per task), handed to
``StoreSink.task_done`` as fast as one thread can; the clock stops when the writer has
committed the last one (``flush``); the writer thread's own CPU time is printed too
(what recording costs, whatever else the machine runs). Then the file size (with the WAL
folded in, as a run leaves it) and the time of ``StoreReader.summary()`` (what
`pardo status` computes), median of --reps.

    python bench/store.py                # 1,000,000 records, ~1 minute
    python bench/store.py --count 100000

With ``--pairs N`` it measures instead what ``--store`` costs a whole run: N pairs of
bench/cli.py's row (``pardo run -jNPROC true :::: FILE`` over 5,000 inputs), one without a
store and one with a new store, back to back, the order alternating from pair to pair so
that a drift in the machine's load hurts both alike. Each pair gives the overhead of its
``--store`` run over its plain one, in wall time and in CPU time (user + system of pardo
and of everything it reaped, its tasks included, from wait4); printed are the median and
the interquartile range of those N ratios, which say more on a shared machine than any
single pair. ``--python`` runs another install's pardo (e.g. main's venv) the same way.

    python bench/store.py --pairs 20     # ~1 minute on 2 CPUs
"""

from __future__ import annotations

import argparse
import copy
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import arm_alarm, nproc, percentile

import pardo
from pardo._store import StoreReader, StoreSink


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the status read")
    ap.add_argument("--dir", default=None, help="where to put the store (default: a temp dir)")
    ap.add_argument("--pairs", type=int, default=0,
                    help="measure --store's cost on a run instead: this many pairs")
    ap.add_argument("--tasks", type=int, default=5000, help="tasks per run (--pairs)")
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter whose pardo runs (--pairs)")
    a = ap.parse_args()
    arm_alarm(3600)
    if a.pairs:
        return pairs(a)
    template = pardo.run(["true"])
    results = []
    for i in range(min(a.count, 1000)):  # distinct objects, as a run hands over
        r = copy.copy(template)
        r.started_at += i * 0.001
        results.append(r)
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = os.path.join(d, "runs.db")
        sink = StoreSink(path)
        sink.run_started(template="true {}", inputs=["bench"])
        n = a.count
        t0 = time.perf_counter()
        for seq in range(1, n + 1):
            sink.task_done(seq, (str(seq),), f"true {seq}", 1, results[seq % len(results)],
                           slot=seq % 2 + 1)
        handed = time.perf_counter() - t0
        sink.flush()
        wall = time.perf_counter() - t0
        # the writer thread's own CPU time: on a shared machine the wall clock measures
        # the neighbours too, this measures what recording costs
        writer_cpu = time.clock_gettime(time.pthread_getcpuclockid(sink._thread.ident))
        sink.run_ended("completed")
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
                   if os.path.isfile(os.path.join(d, f)))
        times = []
        for _ in range(a.reps):
            t = time.perf_counter()
            with StoreReader(path) as rd:
                s = rd.summary()
            times.append(time.perf_counter() - t)
        assert s["tasks"] == n, s["tasks"]
    print(f"records:            {n:,}")
    print(f"handed over in:     {handed:.2f} s ({n / handed:,.0f}/s; the caller's cost "
          f"{handed / n * 1e6:.2f} us per record)")
    print(f"written (committed) {wall:.2f} s: {n / wall:,.0f} records/s")
    print(f"writer thread CPU:  {writer_cpu:.2f} s: {n / writer_cpu:,.0f} records per CPU "
          f"second ({writer_cpu / n * 1e6:.2f} us per record)")
    print(f"store size:         {size / 1e6:.1f} MB ({size / n:.0f} bytes per task)")
    print(f"status summary:     median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f}) over {a.reps}")


def _run(cmd):
    """(wall seconds, CPU seconds) of one command: user + system of it and of everything
    it waited for, from wait4."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stderr.close()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... exited {p.returncode}: {err[-300:]!r}")
    return wall, ru.ru_utime + ru.ru_stime


def pairs(a):
    n = nproc()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        inputs = os.path.join(d, "in")
        with open(inputs, "w") as f:
            f.writelines(f"{i}\n" for i in range(a.tasks))
        store = os.path.join(d, "runs.db")
        plain = [a.python, "-m", "pardo", "run", f"-j{n}", "true", "::::", inputs]
        stored = plain[:4] + ["--store", store] + plain[4:]
        walls, cpus, rows = [], [], []
        _run(plain)  # warm the page cache and the interpreter's files
        for i in range(a.pairs):
            for old in glob.glob(store + "*"):
                if os.path.isdir(old):
                    continue
                os.unlink(old)
            if i % 2 == 0:
                p, s = _run(plain), _run(stored)
            else:
                s, p = _run(stored), _run(plain)
            rows.append((p, s))
            walls.append(s[0] / p[0] - 1)
            cpus.append(s[1] / p[1] - 1)
    print(f"{a.pairs} pairs of `pardo run -j{n} true` over {a.tasks} inputs, without and "
          f"with --store ({a.python}):")
    print(f"  plain:   wall median {statistics.median(r[0][0] for r in rows):.3f} s, "
          f"CPU median {statistics.median(r[0][1] for r in rows):.3f} s")
    print(f"  --store: wall median {statistics.median(r[1][0] for r in rows):.3f} s, "
          f"CPU median {statistics.median(r[1][1] for r in rows):.3f} s")
    for name, xs in (("wall", walls), ("CPU", cpus)):
        print(f"  --store costs {name}: median {statistics.median(xs) * 100:+.1f}% "
              f"(IQR {percentile(xs, 25) * 100:+.1f}% .. {percentile(xs, 75) * 100:+.1f}%; "
              f"min {min(xs) * 100:+.1f}%, max {max(xs) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
