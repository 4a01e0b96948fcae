"""Run zoo adversaries through pardo in this one process and print a JSON report.

    PARDO_ISOLATION=shepherd python driver.py --zoo /tmp/x/pzoo_ab12 --load idle

The isolation rung is chosen when the supervisor starts, so each rung needs its own
process; running every adversary of a rung in one process keeps the matrix fast. The
driver audits each case right after it ends, from inside the process that ran it (the
only place where "no zombie of ours" and "no leaked fd" mean something): status and exit
details, wall time against the deadline, survivors by token, zombie children, new live
children, leaked descriptors, and the memory peak under an output flood. Whatever it
finds goes into the case's ``problems`` list; the pytest side asserts that list is empty
and sweeps /proc for the tokens once more as root.

Standard library only (plus pardo): the unprivileged rung runs this under the system's
/usr/bin/python3.X, which has no third-party packages.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import audit  # noqa: E402

MiB = 1 << 20
FLOOD_OUT_MIB = 256
FLOOD_ERR_MIB = 32
FLOOD_MAX_OUTPUT = 4 * MiB
# Peak memory the driver may gain while a 288 MiB flood is captured with a 4 MiB cap:
# both capped streams, a few copies of each (engine buffer, bytes object), and slack.
FLOOD_HWM_BOUND = 64 * MiB
FLOOD_BLOCK = 65521  # must match zoo.c

# name -> how to run it and what must come out.
#   mode/extra: zoo argv; program: run this instead of the zoo (missing executables)
#   timeout, kill_grace: passed to pardo.run
#   status, returncode, signal: expected Result fields
#   busy: seconds the adversary itself takes before pardo may consider it done (the wall
#     bound is deadline-or-busy + kill_grace where SIGTERM is ignored + slack)
#   stdout_has: substrings the captured stdout must contain (proves the tree formed)
#   grace_used: SIGTERM is ignored, so the tree must live until the grace period ends;
#   grace_bound: SIGTERM may or may not work, so the grace period counts in the bound
ADVERSARIES = {
    "tree": dict(mode="tree", timeout=0.5, status="timeout", stdout_has=[b"tree ready"]),
    "holdout": dict(
        mode="holdout", timeout=10, status="ok", returncode=0, busy=0.0,
        stdout_has=[b"grandchild\n", b"leader\n"],
    ),
    "daemon": dict(
        mode="daemon", timeout=10, status="ok", returncode=0, busy=0.0,
        stdout_has=[b"daemon ready"],
    ),
    "setsid": dict(mode="setsid", timeout=0.5, status="timeout", stdout_has=[b"escaped"]),
    "setpgid": dict(mode="setpgid", timeout=0.5, status="timeout", stdout_has=[b"escaped"]),
    "termignore": dict(
        mode="termignore", timeout=0.5, kill_grace=0.4, status="timeout",
        stdout_has=[b"ignoring TERM"], grace_used=True,
    ),
    "stopped": dict(
        mode="stopped", timeout=0.5, kill_grace=0.4, status="timeout",
        stdout_has=[b"stopping"], grace_bound=True,
    ),
    "hopper": dict(mode="hopper", timeout=0.5, status="timeout", stdout_has=[b"hopping"]),
    "execsleep": dict(mode="execsleep", timeout=0.5, status="timeout", stdout_has=[b"exec done"]),
    "graceful": dict(
        mode="graceful", timeout=0.5, kill_grace=5.0, status="timeout",
        stdout_has=[b"waiting\n", b"got TERM\n"],
    ),
    "forkstorm": dict(mode="forkstorm", timeout=1.5, status="timeout", stdout_has=[b"storm ready"]),
    "closestdio": dict(mode="closestdio", timeout=10, status="failed", returncode=7, busy=0.3),
    "zombies": dict(
        mode="zombies", timeout=10, status="ok", returncode=0, busy=0.1,
        stdout_has=[b"zombies made"],
    ),
    "flood": dict(
        mode="flood", extra=[str(FLOOD_OUT_MIB), str(FLOOD_ERR_MIB)], timeout=30, status="ok",
        returncode=0, busy=10.0, max_output=FLOOD_MAX_OUTPUT,
    ),
    "binary": dict(mode="binary", timeout=10, status="ok", returncode=0, busy=0.0),
    "exit208": dict(mode="exit208", timeout=10, status="failed", returncode=208, busy=0.0),
    "segv": dict(mode="segv", timeout=10, status="signaled", signal=11, busy=0.0),
    "missing": dict(program="/nonexistent/pzoo-missing-{token}", timeout=10, status="error",
                    busy=0.0),
    "missing_path": dict(program="pzoo-missing-{token}", timeout=10, status="error", busy=0.0),
}

# Run at once through pardo.spawn, as the case "together". Not the fork storm: its 64
# leaves fork in a loop and would load the machine far beyond the matrix's "loaded".
TOGETHER = [
    "tree", "holdout", "daemon", "setsid", "setpgid", "termignore", "hopper", "execsleep",
    "graceful", "closestdio", "zombies", "binary", "exit208", "segv", "missing",
]
CASES = [*ADVERSARIES, "together"]
TOGETHER_CROWD = 0.5  # extra slack: 15 trees share the cores

SLACK = {"idle": 0.5, "loaded": 1.0}


def _flood_expected(n):
    block = bytes((j * 31 + 7) & 0xFF for j in range(FLOOD_BLOCK))
    reps = n // FLOOD_BLOCK + 1
    return (block * reps)[:n]


def _check_output(name, spec, r, problems):
    out, err = r.stdout or b"", r.stderr or b""
    for s in spec.get("stdout_has", ()):
        if s not in out:
            problems.append(f"stdout lacks {s!r}: {out[:200]!r}")
    if name == "binary":
        if out != bytes(range(256)) * 4096:
            problems.append(f"binary stdout differs (len {len(out)}, want {256 * 4096})")
        if err != bytes(range(255, -1, -1)) * 64:
            problems.append(f"binary stderr differs (len {len(err)}, want {256 * 64})")
    if name == "exit208" and (out, err) != (b"out\n", b"err\n"):
        problems.append(f"exit208 output {out!r} {err!r}")
    if name == "segv" and out != b"before\n":
        problems.append(f"segv stdout {out!r}")
    if name == "flood":
        if not r.output_truncated:
            problems.append("flood: output_truncated is False")
        for label, got in (("stdout", out), ("stderr", err)):
            if len(got) > FLOOD_MAX_OUTPUT:
                problems.append(
                    f"flood: {label} kept {len(got)} bytes > max_output {FLOOD_MAX_OUTPUT}")
            if len(got) < FLOOD_MAX_OUTPUT // 2:
                problems.append(f"flood: {label} kept only {len(got)} bytes")
            if got != _flood_expected(len(got)):
                problems.append(f"flood: {label} is not the exact prefix of what was written")


def _prepare(name, zoo):
    """(token, argv, run keyword arguments) for one adversary."""
    spec = ADVERSARIES[name]
    token = f"pzt{secrets.token_hex(8)}"
    env = {"PARDO_ZOO_TOKEN": token, "PATH": "/usr/bin:/bin"}
    if "program" in spec:
        argv = [spec["program"].format(token=token)]
    else:
        argv = [zoo, spec["mode"], token, *spec.get("extra", ())]
    kwargs = dict(timeout=spec["timeout"], env=env)
    for k in ("kill_grace", "max_output"):
        if k in spec:
            kwargs[k] = spec[k]
    return token, argv, kwargs


def _wall_bound(spec, load, crowd=0.0):
    """The deadline (or the adversary's own run time), plus the grace period where
    SIGTERM may not end the tree, plus scheduling slack (and ``crowd`` more when other
    adversaries, a fork storm among them, share the machine)."""
    if spec["status"] == "timeout":
        grace = spec.get("grace_used") or spec.get("grace_bound")
        bound = spec["timeout"] + (spec["kill_grace"] if grace else 0)
    else:
        bound = spec.get("busy", 0.0)
    return bound + SLACK[load] + crowd


def _check_result(name, argv, r, wall, load, problems, crowd=0.0, output=True):
    """Compare one Result (and how long it took) with what the adversary must give."""
    spec = ADVERSARIES[name]
    if r.status != spec["status"]:
        problems.append(f"status {str(r.status)!r}, want {spec['status']!r} ({r!r})")
    for field in ("returncode", "signal"):
        if field in spec and getattr(r, field) != spec[field]:
            problems.append(f"{field} {getattr(r, field)!r}, want {spec[field]!r}")
    if spec["status"] == "error":
        prog = argv[0]
        if not r.error or prog not in r.error:
            problems.append(f"error message {r.error!r} does not name the program {prog!r}")
        if r.returncode is not None:
            problems.append(f"returncode {r.returncode!r} for a program that never ran")
    if output:
        _check_output(name, spec, r, problems)
    if spec["status"] == "timeout":
        if wall < spec["timeout"]:
            problems.append(f"finished after {wall:.3f} s, before its {spec['timeout']} s deadline")
        if spec.get("grace_used") and wall < spec["timeout"] + spec["kill_grace"] - 0.05:
            problems.append(f"SIGKILL came after {wall:.3f} s, before the grace period ended")
    bound = _wall_bound(spec, load, crowd)
    if wall > bound:
        problems.append(f"took {wall:.3f} s, bound {bound:.3f} s")
    return {
        "status": str(r.status), "returncode": r.returncode, "signal": r.signal,
        "error": r.error, "duration": r.duration, "output_truncated": r.output_truncated,
        "stdout_head": (r.stdout or b"")[:120].decode("latin-1"),
        "stderr_head": (r.stderr or b"")[:120].decode("latin-1"), "wall_bound": bound,
    }


class _ProcessAudit:
    """Snapshots of this process before a case, compared with what is there after it."""

    def __init__(self, zoo):
        self.comm = os.path.basename(zoo)[:15]  # the kernel keeps 15 bytes of the name
        self.old_zombies = audit.zombies_named(self.comm)
        self.fds, self.kids = audit.fd_table(), audit.children()

    def finish(self, tokens, problems, keep_survivors):
        surv = [p for t in tokens for p in audit.survivors(t)]
        zombies = audit.zombie_children()
        new_kids = {p: v for p, v in audit.children().items() if p not in self.kids and v[0] != "Z"}
        leaks = audit.fd_leaks(self.fds, audit.fd_table())
        orphans = audit.zombies_named(self.comm, ignore=self.old_zombies, settle=1.0,
                                      patient_with=1)
        if surv:
            problems.append(f"{len(surv)} survivor(s): {surv[:5]}")
        if zombies:
            problems.append(f"zombie children of the driver: {zombies}")
        if new_kids:
            problems.append(f"new live children of the driver: {new_kids}")
        if leaks:
            problems.append(f"leaked fds: {leaks}")
        # Zombies that PID 1 adopted are its to reap (some PID 1s do it late: not counted);
        # a zombie held by any other process (a shepherd, the driver) is ours and a leak.
        held = {p: pp for p, pp in orphans.items() if pp != 1}
        if held:
            problems.append(f"{len(held)} zombie(s) of the tree left unreaped ({{pid: ppid}}): "
                            f"{dict(list(held.items())[:5])}")
        if surv and not keep_survivors:
            audit.kill_all(surv)
        return {
            "survivors": surv, "zombies": {str(p): c for p, c in zombies.items()},
            "new_children": {str(p): v for p, v in new_kids.items()},
            "fd_leaks": {str(fd): t for fd, t in leaks.items()},
            "orphan_zombies": {str(p): pp for p, pp in orphans.items()},
        }


def run_case(pardo, zoo, name, load, keep_survivors=False):
    """Run one adversary with pardo.run and audit what it left; returns a JSON-able dict."""
    token, argv, kwargs = _prepare(name, zoo)
    problems = []
    watch = _ProcessAudit(zoo)
    if name == "flood":
        audit.reset_hwm()
    hwm0 = audit.vm_hwm()
    t0 = time.monotonic()
    r = None
    try:
        r = pardo.run(argv, **kwargs)
    except Exception as e:  # the report says what raised; pytest fails on it
        problems.append(f"pardo.run raised {type(e).__name__}: {e}")
    wall = time.monotonic() - t0
    hwm_gain = audit.vm_hwm() - hwm0
    rec = {"token": token, "tokens": [token], "argv": argv, "wall": wall, "hwm_gain": hwm_gain}
    rec.update(watch.finish([token], problems, keep_survivors))
    if r is not None:
        rec.update(_check_result(name, argv, r, wall, load, problems))
        if name == "flood" and hwm_gain > FLOOD_HWM_BOUND:
            problems.append(f"flood: peak memory grew by {hwm_gain / MiB:.1f} MiB")
    rec["problems"] = problems
    return rec


def run_together(pardo, zoo, load):
    """Every adversary of TOGETHER in flight at once through pardo.spawn: each must end
    as it does alone (judged by the engine's own duration), and the batch within the
    longest bound."""
    problems = []
    watch = _ProcessAudit(zoo)
    prepared = {name: _prepare(name, zoo) for name in TOGETHER}
    t0 = time.monotonic()
    tasks = {}
    for name, (_token, argv, kwargs) in prepared.items():
        try:
            tasks[name] = pardo.spawn(argv, tag=name, **kwargs)
        except Exception as e:
            problems.append(f"[{name}] pardo.spawn raised {type(e).__name__}: {e}")
    results = {}
    for name, task in tasks.items():
        try:
            results[name] = task.wait(timeout=60)
        except Exception as e:
            problems.append(f"[{name}] wait raised {type(e).__name__}: {e}")
            task.kill()
    wall = time.monotonic() - t0
    tokens = [p[0] for p in prepared.values()]
    rec = {"token": tokens[0], "tokens": tokens, "wall": wall, "members": {}}
    rec.update(watch.finish(tokens, problems, keep_survivors=False))
    for name, r in results.items():
        mine = []
        # Fifteen trees plus the busy loops on a couple of CPUs: under load an adversary may
        # not get to print its "ready" line before its 0.5 s deadline. What it prints is
        # checked in its own case; here the statuses, times and the audit are what count.
        rec["members"][name] = _check_result(name, prepared[name][1], r, r.duration, load, mine,
                                             crowd=TOGETHER_CROWD, output=load != "loaded")
        problems += [f"[{name}] {m}" for m in mine]
    bound = max(_wall_bound(ADVERSARIES[n], load, TOGETHER_CROWD) for n in TOGETHER)
    rec["wall_bound"] = bound
    if wall > bound:
        problems.append(f"the batch took {wall:.3f} s, bound {bound:.3f} s")
    rec["problems"] = problems
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", required=True, help="path of the compiled zoo program")
    ap.add_argument("--only", default="", help="comma-separated adversaries (default: all)")
    ap.add_argument("--load", choices=sorted(SLACK), default="idle")
    ap.add_argument("--keep-survivors", action="store_true",
                    help="leave survivors alive for the caller to find (negative control)")
    opts = ap.parse_args(argv)
    names = [n for n in opts.only.split(",") if n] or CASES

    report = {"uid": os.getuid(), "python": sys.executable, "cases": {}}
    import pardo

    try:
        report["isolation"] = str(pardo.isolation())
        # Start the supervisor (and whatever descriptors and helpers it keeps for its
        # lifetime) before the first audit snapshot.
        pardo.run(["/bin/true"], timeout=10)
    except pardo.IsolationUnavailable as e:
        report["unavailable"] = str(e)
        print(json.dumps(report))
        return 0
    for name in names:
        if name == "together":
            report["cases"][name] = run_together(pardo, opts.zoo, opts.load)
        else:
            report["cases"][name] = run_case(pardo, opts.zoo, name, opts.load, opts.keep_survivors)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
