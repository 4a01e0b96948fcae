"""``pardo doctor``: which isolation rung is in force here, why the stronger ones are not,
and what the kernel offers."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import _supervisor

_RUNG_ORDER = ("cgroup", "shepherd", "pgroup")
_WHAT_ESCAPES = {
    "cgroup": "nothing: every process a task starts stays in its cgroup until killed",
    "shepherd": "processes that leave the task's tree and are not its descendants any more "
    "(e.g. handed to another parent over a socket); setsid/double-fork escapees are caught",
    "pgroup": "setsid and setpgid escapees and double-fork daemons (they leave the task's "
    "process group); if pardo itself is SIGKILLed, a guardian process kills every task's "
    "group",
}
# Without the helper program there is no guardian: the leaders still die with pardo
# (PDEATHSIG), what they started does not.
_PGROUP_NO_GUARDIAN = ("setsid and setpgid escapees, double-fork daemons, and grandchildren "
                       "when pardo itself is SIGKILLed (no guardian: see why)")


def report() -> dict:
    """Everything ``pardo doctor`` prints, as a dict (for tools and tests)."""
    from . import _engine

    sup = _supervisor.get()
    features = dict(_engine.probe_features())
    cgroup_why = _engine.cgroup_unavailable_reason()
    rung = sup.rung
    why_not = {}
    for stronger in _RUNG_ORDER[: _RUNG_ORDER.index(rung)]:
        if stronger == "cgroup":
            why_not["cgroup"] = cgroup_why or sup.reason
        elif stronger == "shepherd":
            why_not["shepherd"] = sup.reason
    forced = _supervisor._isolation or os.environ.get("PARDO_ISOLATION") or None
    return {
        "rung": rung,
        "reason": sup.reason,
        "forced": forced,
        "stronger_rungs_unavailable": why_not,
        "escapes": (_PGROUP_NO_GUARDIAN if rung == "pgroup" and "no guardian" in sup.reason
                    else _WHAT_ESCAPES[rung]),
        "features": features,
        "cpus": len(os.sched_getaffinity(0)),
        "supervisor_priority": sup.priority(),
        "shepherd": _supervisor.shepherd_path(),
    }


def main(argv: list[str]) -> int:
    from .cli import help_text

    parser = argparse.ArgumentParser(prog="pardo doctor", description=help_text(__doc__))
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        rep = report()
    except Exception as e:  # an unavailable forced rung is a finding, not a crash
        print(f"pardo doctor: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"isolation: {rep['rung']}" + (f" (forced by {rep['forced']!r})" if rep["forced"] else ""))
    print(f"  why: {rep['reason']}")
    for name, why in rep["stronger_rungs_unavailable"].items():
        print(f"  {name} not used: {why}")
    print(f"  can escape: {rep['escapes']}")
    print(f"cpus usable: {rep['cpus']}")
    prio = rep["supervisor_priority"]
    print(f"supervisor thread: {prio}" + ("" if prio != "normal" else
          " (deadlines may fire late on a saturated machine; root or RLIMIT_RTPRIO/RLIMIT_NICE lets it rise)"))
    print("kernel features:")
    for k, v in rep["features"].items():
        print(f"  {k}: {v}")
    zombies = rep["features"].get("zombies left unreaped by PID 1", "0")
    if zombies not in ("0", ""):
        print(
            f"note: {zombies} zombie processes are waiting for PID 1 to reap them; this host's "
            "init may not reap orphans. Under the cgroup and pgroup rungs, processes a task "
            "leaves behind are killed but then wait for PID 1; PARDO_ISOLATION=shepherd reaps "
            "every task's tree itself."
        )
    return 0
