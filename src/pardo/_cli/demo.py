"""``pardo demo``: pardo's main job, ``pardo run``, on a small built-in batch.

Sixteen shell snippets run on every core, each with a 1-second deadline: ordinary ones, one
that fails, one that hangs while holding a tree of grandchildren, one that leaves a daemon
behind, one that ignores SIGTERM, one whose program does not exist. The command line it
runs is printed first, whole, so you can run it yourself as printed; the last line checks
that nothing the batch started is still alive.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time

_TOKEN = f"pardo-demo-{os.getpid()}"


def _cases():
    tok = _TOKEN
    cases = [f"echo {i} | sha256sum | cut -c1-16" for i in range(10)]
    cases += [
        "echo failing >&2; exit 3",
        f"sleep 300 & sleep 301 & : {tok}; sleep 302",  # past its deadline, with grandchildren
        f"(setsid sleep 303 &); : {tok}; echo parent done",  # leaves a daemon behind
        f"trap '' TERM; : {tok}; sleep 304",  # ignores SIGTERM: SIGKILL after the grace
        "pardo-demo-no-such-program",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo counted $i",
    ]
    return cases


def _survivors():
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if _TOKEN.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        from . import help_text

        print(help_text(__doc__))
        return 0
    from .run import main as run_main

    cases = _cases()
    # The joblog goes to the current directory in the command shown (so that it runs as
    # printed, anywhere); the demo itself runs it in a directory of its own.
    args = ["-k", "--tag", "--timeout", "1", "--kill-grace", "0.2", "--joblog", "joblog.tsv",
            "--summary", "sh", "-c", "{}", ":::"]
    words = [shlex.quote(a) for a in args]
    print("$ pardo run " + " ".join(words) + " \\\n"
          + " \\\n".join("    " + shlex.quote(c) for c in cases) + "\n", flush=True)
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="pardo-demo-") as tmp:
        os.chdir(tmp)
        try:
            t0 = time.monotonic()
            rc = run_main(args + cases)
            took = time.monotonic() - t0
        finally:
            os.chdir(here)
        with open(os.path.join(tmp, "joblog.tsv")) as f:
            rows = f.read().splitlines()
    left = _survivors()
    print(f"\nexit status {rc} (= the number of tasks that did not succeed, as GNU parallel); "
          f"{len(rows) - 1} joblog rows; {took:.2f}s in all")
    print(f"processes of this batch still alive: {len(left)}")
    sys.stdout.flush()
    return 1 if left else 0
