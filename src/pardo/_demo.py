"""``pardo demo``: a small built-in batch that shows, in a few seconds, what pardo does.

Sixteen tasks run on every core: ordinary ones, one that fails, one that hangs past its
deadline while holding a tree of grandchildren, one that leaves a daemon behind, one that
cannot start. Each line says how the task ended; the last lines check that nothing the
batch started is still alive.
"""

from __future__ import annotations

import os
import sys
import time

_TOKEN = f"pardo-demo-{os.getpid()}"


def _tasks():
    tok = _TOKEN
    for i in range(10):
        yield f"checksum {i}", ["sh", "-c", f"echo {i} | sha256sum | cut -c1-16"], 10
    yield "exit 3", ["sh", "-c", "echo failing >&2; exit 3"], 10
    yield "hangs with grandchildren", ["sh", "-c", f"sleep 300 & sleep 301 & : {tok}; sleep 302"], 1.0
    yield "leaves a daemon", ["sh", "-c", f"(setsid sleep 303 &) ; : {tok}; echo parent done"], 10
    yield "ignores SIGTERM", ["sh", "-c", f"trap '' TERM; : {tok}; sleep 304"], 0.5
    yield "no such program", ["pardo-demo-no-such-program"], 10
    yield "busy loop", [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.3: pass"], 10


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
        print(__doc__)
        return 0
    import pardo

    q = pardo.ResultQueue()
    jobs = len(os.sched_getaffinity(0))
    todo = list(_tasks())
    t0 = time.monotonic()
    print(f"pardo demo: {len(todo)} tasks, {jobs} at a time, isolation {pardo.isolation()!r}\n")
    running = 0
    while todo or running:
        while todo and running < jobs:
            name, argv_, timeout = todo.pop(0)
            pardo.spawn(argv_, timeout=timeout, kill_grace=0.2, queue=q, tag=name)
            running += 1
        task = q.get()
        running -= 1
        r = task.result
        out = (r.stdout or r.stderr).decode(errors="replace").strip().splitlines()
        detail = f"  [{out[-1]}]" if out else ""
        print(f"  {r.status.value:<9} {task.tag:<26} {r.duration:6.3f}s  {r.describe()}{detail}")
    left = _survivors()
    print(f"\n{time.monotonic() - t0:.2f}s in all; processes of this batch still alive: {len(left)}")
    return 1 if left else 0
