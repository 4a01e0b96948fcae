"""``pardo run`` against its anchors: xargs -P, GNU parallel, and the C floor.

Rows (each run --reps times, interleaved, so that a noisy minute hurts all alike):

- floor: bench/_floor.c, nproc posix_spawn+waitpid in flight, `/bin/true 1` COUNT times
  (one argument, like the `true N` every other row runs);
- pardo run: ``pardo run -j NPROC true :::: FILE`` (output grouped, deadline-capable,
  isolation on);
- xargs -P: ``xargs -P NPROC -n 1 true < FILE`` (no capture, no deadline, no isolation);
- GNU parallel: ``parallel -j NPROC true :::: FILE``.

Then: ``pardo run true ::: 1`` wall time (median of --startup-reps), and peak RSS of
``pardo run`` over --rss-inputs inputs (``true`` each, -j NPROC).

Prints medians and ratios to the floor measured in this run. Targets (issue 3): pardo
>= 0.85x the floor, >= 8x GNU parallel, faster than xargs -P; RSS <= 100 MB over
1,000,000 inputs; ``pardo run true ::: 1`` <= 150 ms.

With --store, also ``pardo run --store FILE`` (a new store each repetition): the job
store's cost on the fastest tasks there are (issue 11: <= 3%).

Usage: python bench/cli.py [--count 5000] [--reps 5] [--rss-inputs 1000000] [--no-parallel]
       [--store]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import arm_alarm, compile_c, median, nproc, print_table  # noqa: E402

PARDO = [sys.executable, "-m", "pardo"]


def _timed(cmd, stdin=None, env=None):
    """Wall seconds of one command; raises if it fails."""
    t0 = time.monotonic()
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as f:
        p = subprocess.run(cmd, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env=env)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}... exited {p.returncode}: {p.stderr[-300:]!r}")
    return dt


def _peak_rss_kb(cmd):
    """Run cmd and return (seconds, peak RSS in KiB of cmd's process) via wait4."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}... exited {p.returncode}")
    return time.monotonic() - t0, ru.ru_maxrss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--startup-reps", type=int, default=15)
    ap.add_argument("--rss-inputs", type=int, default=1_000_000)
    ap.add_argument("--no-parallel", action="store_true", help="skip GNU parallel (slow)")
    ap.add_argument("--extra-rows", action="store_true",
                    help="also pardo run with inputs on stdin, and with each isolation rung")
    ap.add_argument("--store", action="store_true",
                    help="also pardo run --store (a new job store per repetition)")
    args = ap.parse_args()
    arm_alarm(7200)

    n = nproc()
    floor = compile_c("_floor")
    tmp = tempfile.mkdtemp(prefix="pardo-bench-cli-")
    try:
        inputs = os.path.join(tmp, "in")
        with open(inputs, "w") as f:
            f.writelines(f"{i}\n" for i in range(args.count))
        pardo_cmd = PARDO + ["run", f"-j{n}", "true", "::::", inputs]
        rows = {
            # The same program with one argument, as every other row runs it (`true N`):
            # coreutils true does more start-up work when given an argument.
            "floor (C posix_spawn+wait)": ([str(floor), str(n), str(args.count), "/bin/true",
                                            "1"], None, None),
            "pardo run": (pardo_cmd, None, None),
            "xargs -P": (["xargs", "-P", str(n), "-n", "1", "true"], inputs, None),
        }
        if args.extra_rows:
            rows["pardo run (inputs on stdin)"] = (PARDO + ["run", f"-j{n}", "true"], inputs, None)
            for rung in ("cgroup", "shepherd", "pgroup"):
                rows[f"pardo run ({rung})"] = (pardo_cmd, None,
                                               dict(os.environ, PARDO_ISOLATION=rung))
        store = os.path.join(tmp, "runs.db")
        if args.store:
            rows["pardo run --store"] = (PARDO + ["run", "--store", store]
                                         + pardo_cmd[len(PARDO) + 1:], None, None)
        gnu = shutil.which("parallel")
        if gnu and not args.no_parallel:
            rows["GNU parallel"] = ([gnu, "--will-cite", f"-j{n}", "true", "::::", inputs],
                                    None, None)
        times = {k: [] for k in rows}
        for _ in range(args.reps):
            for name, (cmd, stdin, env) in rows.items():
                for old in glob.glob(store + "*"):  # each --store run starts a new store
                    os.unlink(old)
                times[name].append(_timed(cmd, stdin, env))
        med = {k: median(v) for k, v in times.items()}
        f = med["floor (C posix_spawn+wait)"]
        p = med["pardo run"]
        print(f"{args.count} x true, {n} in flight, {args.reps} interleaved reps, medians:")
        table = []
        for k, v in med.items():
            table.append([k, v, args.count / v, f / v, v / p])
        print_table(["row", "seconds", "tasks/s", "speed vs floor", "time vs pardo run"], table)

        startup = [_timed(PARDO + ["run", "true", ":::", "1"]) for _ in range(args.startup_reps)]
        print(f"\npardo run true ::: 1: median {median(startup) * 1000:.0f} ms "
              f"(min {min(startup) * 1000:.0f} ms; target <= 150 ms)")

        if args.rss_inputs:
            big = os.path.join(tmp, "big")
            with open(big, "w") as fh:
                for i in range(0, args.rss_inputs, 100_000):
                    fh.writelines(f"{j}\n" for j in range(i, min(i + 100_000, args.rss_inputs)))
            secs, kb = _peak_rss_kb(PARDO + ["run", f"-j{n}", "true", "::::", big])
            print(f"pardo run over {args.rss_inputs} inputs: peak RSS {kb / 1024:.1f} MiB "
                  f"(target <= 100 MB), {secs:.1f} s, {args.rss_inputs / secs:.0f} tasks/s")
        print(f"\nratios: pardo/floor speed {f / p:.2f}x (target >= 0.85); "
              + (f"pardo vs GNU parallel {med['GNU parallel'] / p:.1f}x faster (target >= 8; "
                 f"the floor itself is {med['GNU parallel'] / f:.1f}x faster here, the "
                 f"ceiling for any launcher); "
                 if "GNU parallel" in med else "")
              + f"pardo vs xargs -P {med['xargs -P'] / p:.2f}x (target > 1)"
              + (f"; --store costs {(med['pardo run --store'] / p - 1) * 100:+.1f}% time "
                 "(target <= 3%)" if "pardo run --store" in med else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
