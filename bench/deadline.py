"""Deadline-to-dead latency: how long after its deadline a growing tree is fully gone.

    python bench/deadline.py [--runs 60] [--timeout 0.25] [--rungs cgroup,shepherd,pgroup]

The task is ``_tree.c``: a process tree that keeps forking (about 40 processes, leaves
replaced every 10-100 ms), so every deadline lands while forks are in flight. Each run
gives it ``--timeout`` seconds, through:

- ``pardo.run(timeout=T, kill_grace=0)``: the pure kill latency, once per isolation rung;
- ``timeout -s KILL T`` (coreutils): kills its process group at the deadline;
- ``subprocess.run(timeout=T)``'s code path: SIGKILLs the leader only;
- and, as "grace" rows, ``pardo.run(timeout=T)`` with the default kill_grace and
  ``timeout T`` (SIGTERM): the tree respects SIGTERM, so it dies at the TERM.

Latency is measured from the deadline -- T after the kernel forked the process the tool
started -- to the death of the last process of the tree, as the kernel timestamps it:
``_procwatch.c`` listens to the proc connector, which reports every fork and exit with
its CLOCK_MONOTONIC time, and follows the tree by fork lineage, so neither reparenting
nor a polling interval blurs the figure, and measuring adds no load. The launch delay
(from the call to that fork) is reported apart. Processes alive when the call returned,
and still alive a short settle later, are counted (cross-checked by the token every
tree process carries in its argv), then killed by pid.

Every configuration runs idle and under load (2*nproc busy loops), in chunks of runs
that take turns (so a burst of outside load hits every row alike), each chunk in its own
worker process so that one tool's leftovers or zombies cannot affect the next. Prints
p50/p99/max per row and the pardo/anchor ratios, all measured in this one invocation.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36
TREE_ALARM_S = 20  # no tree process outlives this, whatever the tool does
TREE_SHAPE = ("3", "3", "10", "100")  # depth, fanout, leaf life min/max ms: 40 processes
SETTLE_S = 0.25  # after the call returns, how long the tree may take to finish dying
TARGET_P99_MS = 10.0
LEGEND = """
All in ms. The deadline is T after the kernel forked the tool's process.
start: from the call to that fork. gone: the last process of the tree dead (kernel exit
timestamp). return: the call returned. engine: Result.duration - timeout.
alive at return: tree processes alive 1 ms after the call returned.
left behind: still alive 0.25 s after that (the benchmark then kills them by pid).
zombies: held by our process / left for PID 1 to reap.
size/forks: median tree size at the deadline / forks after it.
grace rows: default kill_grace, or `timeout` with SIGTERM; the tree dies on SIGTERM.
"""


class Watcher:
    """The ``_procwatch`` helper: kernel fork/exit events for one tree at a time."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [str(C.compile_c("_procwatch")), "3600"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(
                "the proc connector is not available (needs root / CAP_NET_ADMIN and "
                "CONFIG_PROC_EVENTS); deadline.py cannot time process exits without it"
            )

    def begin(self) -> None:
        self.proc.stdin.write("begin\n")
        assert self.proc.stdout.readline().strip() == "ok"

    def end(self, root: int, deadline_ns: int, returned_ns: int) -> dict:
        self.proc.stdin.write(f"end {root} {deadline_ns} {returned_ns}\n")
        f = self.proc.stdout.readline().split()
        return {
            "root_fork_ns": int(f[0]),
            "last_exit_ns": int(f[1]),
            "total": int(f[2]),
            "at_deadline": int(f[3]),
            "forks_after": int(f[4]),
            "lost": bool(int(f[5])),
            "last_pid": int(f[6]),
            "last_fork_ns": int(f[7]),
            "at_return": int(f[8]),
            "alive": [] if f[9] == "-" else [int(p) for p in f[9].split(",")],
        }

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _launch(tool: str, grace: str, argv: list[str], timeout: float) -> tuple[int, float | None]:
    """Run ``argv`` under ``tool`` with deadline ``timeout``.

    Returns:
        (pid of the process the tool started, the engine's own latency in seconds or
        None): for ``timeout`` the pid is coreutils' own process, whose tree includes
        the task.
    """
    if tool == "pardo":
        import pardo

        kw = {"kill_grace": 0} if grace == "kill" else {}
        r = pardo.run(argv, timeout=timeout, **kw)
        if r.status != "timeout":
            raise RuntimeError(f"pardo.run ended with {r!r}, expected a timeout")
        return r.pid, r.duration - timeout
    if tool == "timeout":
        sig = ["-s", "KILL"] if grace == "kill" else []
        cmd = ["timeout", *sig, f"{timeout}", *argv]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
            p.communicate()
        return p.pid, None
    if tool == "subprocess":
        # The body of subprocess.run(capture_output=True, timeout=T) on POSIX, inlined
        # because run() does not expose the pid.
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
            try:
                p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.pid, None
    raise ValueError(tool)


def worker(tool: str, grace: str, runs: int, timeout: float) -> dict:
    """Measure ``runs`` deadlines of one configuration; runs in its own process."""
    C.arm_alarm(int(runs * (timeout + SETTLE_S + 2) + 120))
    anchor = tool != "pardo"
    if anchor:
        # Orphans of an anchor's tree come to this process, which reaps them, instead of
        # piling up under a PID 1 that does not reap. (Not for pardo: how it reaps its
        # own trees is part of what is measured.)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    tree = C.compile_c("_tree")
    watcher = Watcher()
    rung = None
    if tool == "pardo":
        import pardo

        pardo.run(["/bin/true"], timeout=5)  # start the supervisor outside the timing
        rung = str(pardo.isolation())
    zombies_before = set(C.zombies_named(tree.name))
    samples = []
    try:
        for _ in range(runs):
            token = C.new_token("pardotree")
            argv = [str(tree), token, str(TREE_ALARM_S), *TREE_SHAPE]
            watcher.begin()
            t0 = time.monotonic_ns()
            root, engine_latency = _launch(tool, grace, argv, timeout)
            returned = time.monotonic_ns()
            # The tool has returned; give what it killed a moment to finish dying.
            give_up = returned + int(SETTLE_S * 1e9)
            while True:
                # A process whose exit event comes within 1 ms of the return was already
                # dying (its pipes closed, which is what the caller waited for).
                w = watcher.end(root, t0 + int(timeout * 1e9), returned + 1_000_000)
                if w["last_exit_ns"] or time.monotonic_ns() >= give_up:
                    break
                time.sleep(0.002)
            # The deadline proper: T after the tool's process came to exist (the kernel's
            # fork timestamp), so launch delays are reported apart, as "start".
            born = w["root_fork_ns"] or t0
            deadline = born + int(timeout * 1e9)
            alive = set(w["alive"]) | set(C.pids_with_token(token))
            C.kill_token(token)
            C.kill_pids(sorted(alive))
            if anchor:
                _reap_orphans()
            samples.append(
                {
                    "gone_ms": (w["last_exit_ns"] - deadline) / 1e6 if w["last_exit_ns"] else None,
                    "return_ms": (returned - deadline) / 1e6,
                    "engine_ms": engine_latency * 1e3 if engine_latency is not None else None,
                    "start_ms": (born - t0) / 1e6,
                    "deadline_ns": deadline,  # CLOCK_MONOTONIC, to line up with traces
                    "left": len(alive),
                    "at_return": w["at_return"],
                    "size": w["at_deadline"],
                    "forks_after": w["forks_after"],
                    "lost": w["lost"] or not w["root_fork_ns"],
                    # when the process that died last was born, relative to the deadline
                    "last_born_ms": (
                        (w["last_fork_ns"] - deadline) / 1e6 if w["last_fork_ns"] else None
                    ),
                }
            )
    finally:
        watcher.close()
    time.sleep(0.05)
    zombies = {p: pp for p, pp in C.zombies_named(tree.name).items() if p not in zombies_before}
    return {
        "tool": tool,
        "grace": grace,
        "rung": rung,
        "samples": samples,
        # a zombie whose parent is not PID 1 is held by a process of ours: a leak
        "zombies_held": sum(1 for pp in zombies.values() if pp != 1),
        "zombies_init": sum(1 for pp in zombies.values() if pp == 1),
    }


def _reap_orphans() -> None:
    """Reap every exited child of this (subreaper) process; the watcher lives on."""
    for _ in range(2):
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
        # SIGKILLed orphans may not be zombies yet: one more look after a moment.
        time.sleep(0.005)


def _run_worker(tool: str, grace: str, rung: str | None, runs: int, timeout: float) -> dict:
    env = dict(os.environ)
    if rung:
        env["PARDO_ISOLATION"] = rung
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, "--grace", grace]
    cmd += ["--runs", str(runs), "--timeout", str(timeout)]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        return {"tool": tool, "grace": grace, "rung": rung, "failed": p.returncode}
    return json.loads(p.stdout)


def _row(key: tuple, res: dict) -> list[object]:
    tool, grace, rung, load = key
    name = tool + (f" ({res.get('rung') or rung})" if tool == "pardo" else "")
    s = res["samples"]
    if "failed" in res:
        name += f" [worker exited {res['failed']}]"
    if not s:
        return [name, grace, load, 0] + [""] * 12
    gone = [x["gone_ms"] for x in s if x["gone_ms"] is not None]
    ret = [x["return_ms"] for x in s]
    eng = [x["engine_ms"] for x in s if x["engine_ms"] is not None]
    never = len(s) - len(gone)
    left = sum(x["left"] for x in s)
    runs_left = sum(1 for x in s if x["left"])
    at_ret = sum(x["at_return"] for x in s)
    runs_at_ret = sum(1 for x in s if x["at_return"])

    def pct(xs, p):
        return C.percentile(xs, p) if xs else "-"

    return [
        name,
        grace,
        load,
        len(s),
        pct([x["start_ms"] for x in s], 99),
        pct(gone, 50) if not never else "never",
        pct(gone, 90) if not never else "never",
        pct(gone, 99) if not never else "never",
        max(gone) if gone and not never else "never",
        pct(ret, 50),
        pct(ret, 99),
        pct(eng, 99),
        f"{at_ret} in {runs_at_ret} runs" if at_ret else "0",
        f"{left} in {runs_left} runs" if left else "0",
        f"{res['zombies_held']}/{res['zombies_init']}",
        f"{C.median([x['size'] for x in s]):.0f}/{C.median([x['forks_after'] for x in s]):.0f}"
        + (" LOST EVENTS" if any(x["lost"] for x in s) else ""),
    ]


def _merge(into: dict, res: dict) -> None:
    """Add one worker's chunk of runs to the accumulated results of its row."""
    if "failed" in res:
        into["failed"] = res["failed"]
        return
    into["rung"] = res["rung"]
    into["samples"] += res["samples"]
    into["zombies_held"] += res["zombies_held"]
    into["zombies_init"] += res["zombies_init"]


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=60, help="deadlines per row")
    ap.add_argument("--chunk", type=int, default=10, help="runs per row between switching rows")
    ap.add_argument("--timeout", type=float, default=0.25, help="task deadline, seconds")
    ap.add_argument(
        "--rungs",
        default="cgroup,shepherd,pgroup",
        help="pardo isolation rungs to measure (comma-separated; 'auto' = the default)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--grace", default="kill", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        json.dump(worker(a.worker, a.grace, a.runs, a.timeout), sys.stdout)
        return

    n = C.nproc()
    C.arm_alarm(int(3600 * 2))
    for name in ("_tree", "_procwatch", "_busy"):
        C.compile_c(name)
    rungs = [r for r in a.rungs.split(",") if r]
    configs = []
    for grace in ("kill", "grace"):
        configs += [("pardo", grace, None if r == "auto" else r) for r in rungs]
        configs.append(("timeout", grace, None))
    configs.append(("subprocess", "kill", None))
    loads = (("idle", 0), ("loaded", 2 * n))
    print(
        f"deadline.py: {n} CPUs, a {1 + 3 + 9 + 27}-process churning tree, timeout "
        f"{a.timeout} s, {a.runs} runs per row in chunks of {a.chunk}, rows interleaved; "
        f"load average at start {_loadavg()}",
        flush=True,
    )
    results = {
        (tool, grace, rung, load): {"samples": [], "zombies_held": 0, "zombies_init": 0}
        for load, _ in loads
        for tool, grace, rung in configs
    }
    done = 0
    while done < a.runs:
        chunk = min(a.chunk, a.runs - done)
        # Rows take turns chunk by chunk, so a burst of outside load hits all of them.
        for load, busy in loads:
            with C.BusyLoad(busy):
                time.sleep(0.2 if busy else 0)  # let the busy loops spread over the CPUs
                for tool, grace, rung in configs:
                    key = (tool, grace, rung, load)
                    if "failed" in results[key]:
                        continue
                    _merge(results[key], _run_worker(tool, grace, rung, chunk, a.timeout))
        done += chunk
        print(f"  {done}/{a.runs} runs per row done", file=sys.stderr, flush=True)
    headers = [
        "tool", "grace", "load", "runs", "start p99", "gone p50", "gone p90", "gone p99",
        "gone max", "return p50", "return p99", "engine p99", "alive at return", "left behind",
        "zombies", "size/forks",
    ]  # fmt: skip
    print()
    C.print_table(headers, [_row(k, r) for k, r in results.items()])
    print(LEGEND + f"Load average at the end: {_loadavg()}.")
    _print_verdict(results)


def _print_verdict(results: dict) -> None:
    """Each pardo row against the target, and against coreutils `timeout` in this run."""
    print()
    for (tool, grace, _rung, load), r in results.items():
        if tool != "pardo" or not r["samples"]:
            continue
        gone = [x["gone_ms"] for x in r["samples"] if x["gone_ms"] is not None]
        left = sum(x["left"] + x["at_return"] for x in r["samples"])
        p99 = C.percentile(gone, 99) if len(gone) == len(r["samples"]) else float("inf")
        ok = p99 <= TARGET_P99_MS and left == 0 and r["zombies_held"] == 0
        ref = results.get(("timeout", grace, None, load), {}).get("samples", [])
        ref_gone = [x["gone_ms"] for x in ref if x["gone_ms"] is not None]
        vs = ""
        if gone and ref_gone and len(ref_gone) == len(ref):
            p50_ratio = C.percentile(gone, 50) / C.percentile(ref_gone, 50)
            p99_ratio = p99 / C.percentile(ref_gone, 99)
            vs = f" (vs coreutils timeout: p50 {p50_ratio:.2f}x, p99 {p99_ratio:.2f}x)"
        print(
            f"pardo ({r['rung']}) {grace:5} {load:6}: p99 {p99:6.2f} ms{vs}, {left} alive at "
            "return or left behind, "
            f"{r['zombies_held']} zombies held -> {'meets' if ok else 'MISSES'} the target "
            f"(p99 <= {TARGET_P99_MS:g} ms, nothing left)"
        )


if __name__ == "__main__":
    main()
