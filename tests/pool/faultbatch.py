"""The mixed fault batch of issue 10, shared by its test and its stress run.

``Pool(2, task_timeout=1.0)``: 100 ordinary ``x + 1`` calls, then a call that sleeps 30 s,
one stuck in C holding the GIL for 30 s, one that hangs with child processes of its own,
one that segfaults, one that calls ``os._exit(3)``, one that raises, then 100 more ordinary
calls. Every ordinary call must succeed and every faulty one fail with its own error.

Run as a script for the stress figures (every run checks the same things)::

    python tests/pool/faultbatch.py --runs 50            # idle
    python tests/pool/faultbatch.py --runs 20 --load     # under 2 x nproc busy loops
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "zoo"))
import pardo  # noqa: E402

import audit  # noqa: E402

ORDINARY = 100
TASK_TIMEOUT = 1.0
HANG_S = 30


def inc(x):
    return x + 1


def hold_gil_in_c(seconds):
    # PyDLL keeps the GIL across the foreign call: the worker cannot run Python meanwhile.
    ctypes.PyDLL(None).sleep(seconds)


def hang_with_children(token, seconds):
    # Each process of the tree arms its own alarm, so a bug cannot leave it running.
    child = (
        "import signal, subprocess, sys, time; signal.alarm(90); "
        "subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.alarm(90); time.sleep(90)', sys.argv[1]]); "
        "time.sleep(90)"
    )
    subprocess.Popen([sys.executable, "-c", child, token])
    time.sleep(seconds)


def segfault():
    ctypes.string_at(0)


def exit_now(code):
    os._exit(code)


def raise_value_error(message):
    raise ValueError(message)


def run_batch(pool, token):
    """Submit the batch to ``pool``; return a list of problems (empty when all is right)."""
    first = [pool.submit(inc, x) for x in range(ORDINARY)]
    faulty = {
        "sleep": (pool.submit(time.sleep, HANG_S), pardo.TaskTimeout, None),
        "gil": (pool.submit(hold_gil_in_c, HANG_S), pardo.TaskTimeout, None),
        "tree": (pool.submit(hang_with_children, token, HANG_S), pardo.TaskTimeout, None),
        "segfault": (pool.submit(segfault), pardo.TaskCrashed, "signal"),
        "exit": (pool.submit(exit_now, 3), pardo.TaskCrashed, "exitcode"),
        "raise": (pool.submit(raise_value_error, "my own error"), ValueError, None),
    }
    second = [pool.submit(inc, x) for x in range(ORDINARY, 2 * ORDINARY)]
    problems = []
    for x, fut in enumerate(first + second):
        exc = fut.exception(timeout=120)
        if exc is not None:
            problems.append(f"inc({x}) failed: {exc!r}")
        elif fut.result() != x + 1:
            problems.append(f"inc({x}) returned {fut.result()!r}")
    for name, (fut, kind, attr) in faulty.items():
        exc = fut.exception(timeout=120)
        if not isinstance(exc, kind):
            problems.append(f"{name}: expected {kind.__name__}, got {exc!r}")
        elif attr == "signal" and exc.signal != signal.SIGSEGV:
            problems.append(f"{name}: signal {exc.signal}, expected SIGSEGV")
        elif attr == "exitcode" and exc.exitcode != 3:
            problems.append(f"{name}: exit code {exc.exitcode}, expected 3")
        elif kind is ValueError and str(exc) != "my own error":
            problems.append(f"{name}: {exc!r}")
        elif kind is pardo.TaskTimeout and not str(exc).startswith(
            {"sleep": "sleep()", "gil": "hold_gil_in_c()", "tree": "hang_with_children()"}[name]
        ):
            problems.append(f"{name}: the timeout names another call: {exc}")
    return problems


def one_run():
    """One batch on a fresh pool; the problems found, including processes left behind."""
    token = f"pardo-faultbatch-{secrets.token_hex(6)}"
    with pardo.Pool(2, task_timeout=TASK_TIMEOUT) as pool:
        problems = run_batch(pool, token)
    left = audit.survivors(token)
    if left:
        audit.kill_all(left)
        problems.append(f"processes of the hanging task left: {left}")
    return problems


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--load", action="store_true", help="under 2 x nproc busy loops")
    args = parser.parse_args(argv)
    signal.alarm(60 * args.runs + 60)  # a hung run cannot keep the machine busy
    busy = []
    if args.load:
        loop = f"import signal; signal.alarm({30 * args.runs + 60})\nwhile True: pass"
        busy = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(2 * os.cpu_count())]
    failed = 0
    start = time.monotonic()
    try:
        for i in range(args.runs):
            t0 = time.monotonic()
            problems = one_run()
            failed += bool(problems)
            verdict = "ok" if not problems else "FAILED"
            print(f"run {i + 1}: {verdict} in {time.monotonic() - t0:.1f} s")
            for p in problems:
                print("   ", p)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    print(
        f"{args.runs - failed} of {args.runs} runs right{' under load' if args.load else ''} "
        f"({time.monotonic() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
