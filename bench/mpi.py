"""pardo over MPI against plain mpi4py.futures and against a local run, in one run.

    python bench/mpi.py [--ranks 3] [--calls 3000] [--tasks 2000] [--repeat 3]

Needs the mpi extra (mpi4py, MPICH's mpiexec beside this Python). Each figure is the median
of ``--repeat`` runs, and every run is its own ``mpiexec`` job; times exclude start-up (the
clock starts after the pools are up and warmed).

1. Per-call dispatch overhead: ``--calls`` calls of a no-op through
   ``mpi4py.futures.MPIPoolExecutor`` (``mpiexec -n R python -m mpi4py.futures``: R-1
   workers, each call in a rank process) and through ``pardo.Pool(backend="mpi", jobs=1)``
   (R-1 ranks, each call in a worker process of that rank's pool, with a deadline in force).
   Target (issue 12): pardo's per-call time at most 1.2x MPIPoolExecutor's.
2. ``true`` commands: ``mpiexec -n R pardo run --mpi --jobs-per-rank 1`` against a local
   ``pardo run -j R-1``, the same number of slots (both timed inside the process, from
   the start of ``pardo run``'s main: MPI's start-up is not counted, the ranks' is).
3. Rank 0's CPU per task in (2): what one task costs the scheduler (its dispatcher thread
   included), and from it how many 10 ms tasks per second rank 0 can feed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")

_POOL = textwrap.dedent('''
    import json, sys, time
    WHO, N = sys.argv[-2], int(sys.argv[-1])

    def noop(x):
        return x

    if WHO == "mpi4py":
        from mpi4py.futures import MPIPoolExecutor
        pool = MPIPoolExecutor()
        kw = {}
    else:
        import pardo
        pool = pardo.Pool(backend="mpi", jobs=1)
        kw = {"task_timeout": 60}
    list(pool.map(noop, range(200)))  # workers up and warm
    t0 = time.perf_counter()
    if kw:
        list(pool.map(noop, range(N), **kw))
    else:
        list(pool.map(noop, range(N)))
    dt = time.perf_counter() - t0
    pool.shutdown()
    print(json.dumps({"per_call": dt / N}))
''')

_RANK0 = textwrap.dedent('''
    import json, os, sys, time
    from pardo._cli import main
    t0, c0 = time.perf_counter(), time.process_time()
    rc = main(sys.argv[1:])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if os.environ.get("PMI_RANK", "0") == "0":
        print(json.dumps({"wall": wall, "cpu": cpu, "rc": rc}), file=sys.stderr)
''')


def _run(argv, timeout=600):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                       env=dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}"))
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{p.stderr}")
    return p


def _json_line(text):
    return json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    n = str(a.ranks)
    with tempfile.TemporaryDirectory() as d:
        pool_py = Path(d) / "pool.py"
        pool_py.write_text(_POOL)
        rank0_py = Path(d) / "rank0.py"
        rank0_py.write_text(_RANK0)
        inputs = Path(d) / "in"
        inputs.write_text("".join(f"{i}\n" for i in range(a.tasks)))

        rows = {"mpi4py": [], "pardo": []}
        for _ in range(a.repeat):  # alternate, so drift hits both alike
            for who, times in rows.items():
                pre = [MPIEXEC, "-n", n, sys.executable]
                argv = pre + (["-m", "mpi4py.futures"] if who == "mpi4py" else [])
                out = _run(argv + [str(pool_py), who, str(a.calls)]).stdout
                times.append(_json_line(out)["per_call"])
        m4, pd = statistics.median(rows["mpi4py"]), statistics.median(rows["pardo"])
        print(f"per-call time, {a.ranks} ranks ({a.ranks - 1} workers), {a.calls} no-op calls")
        print(f"  mpi4py.futures.MPIPoolExecutor   {m4 * 1e6:8.1f} us")
        print(f"  pardo.Pool(backend='mpi')        {pd * 1e6:8.1f} us   {pd / m4:.2f}x")

        local, remote, cpu = [], [], []
        slots = str(a.ranks - 1)
        for _ in range(a.repeat):
            p = _run([sys.executable, str(rank0_py), "run", "-j", slots, "true", "::::",
                      str(inputs)])
            local.append(_json_line(p.stderr)["wall"])
            p = _run([MPIEXEC, "-n", n, sys.executable, str(rank0_py), "run", "--mpi",
                      "--jobs-per-rank", "1", "true", "::::", str(inputs)])
            r = _json_line(p.stderr)
            remote.append(r["wall"])
            cpu.append(r["cpu"])
        lo, re_, c = (statistics.median(x) for x in (local, remote, cpu))
        print(f"`true` x {a.tasks}, {slots} slots")
        print(f"  local pardo run -j {slots}           {a.tasks / lo:8.0f} tasks/s")
        print(f"  mpiexec -n {n} pardo run --mpi       {a.tasks / re_:8.0f} tasks/s   "
              f"{lo / re_:.2f}x local")
        per = c / a.tasks
        print(f"rank 0 CPU per task: {per * 1e6:.0f} us -> at most {1 / per:.0f} tasks/s; "
              f"at 10 ms tasks it feeds about {0.010 / per:.0f} busy slots")


if __name__ == "__main__":
    main()
