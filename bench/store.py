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
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import arm_alarm

import pardo
from pardo._store import StoreReader, StoreSink


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the status read")
    ap.add_argument("--dir", default=None, help="where to put the store (default: a temp dir)")
    a = ap.parse_args()
    arm_alarm(1200)
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


if __name__ == "__main__":
    main()
