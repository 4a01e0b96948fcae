"""``pardo doctor``: which isolation rung is in force here, why the stronger ones are not,
and what the kernel offers."""

from __future__ import annotations

import argparse
import json
import sys

from .. import _supervisor
from .._errors import PardoError
from . import help_text

# What a "no" means for pardo, feature by feature (kernel versions: where it came).
_IF_MISSING = {
    "clone3": "children start with clone() instead (clone3: Linux 5.3; Docker's default "
    "seccomp profile refuses it everywhere)",
    "clone3 CLONE_INTO_CGROUP": "the cgroup rung's children move themselves into their "
    "cgroup before their exec (placed at creation: Linux 5.7)",
    "pidfd": "only the shepherd rung works: the cgroup and pgroup rungs learn of a task's "
    "exit from its pidfd (Linux 5.3)",
    "close_range": "children mark extra fds close-on-exec by walking /proc/self/fd "
    "(close_range: Linux 5.9)",
    "close_range CLOSE_RANGE_CLOEXEC": "children close extra fds with close_range, or walk "
    "/proc/self/fd (the flag: Linux 5.11)",
    "cgroup.kill": "the cgroup rung kills a task's cgroup by freezing it, killing every "
    "member, thawing (cgroup.kill: Linux 5.14)",
    "cgroup.freeze": "without cgroup.kill either, the cgroup rung cannot kill a tree here "
    "(cgroup.freeze: Linux 5.2)",
    "child subreaper": "the shepherd rung cannot adopt a task's orphans",
}


def _feature_lines(feats: dict) -> list[str]:
    """One line per kernel feature, a "no" followed by what it means for pardo."""
    lines = []
    for k, v in feats.items():
        why = _IF_MISSING.get(k) if v.startswith("no") else None
        if k == "cgroup.freeze" and feats.get("cgroup.kill") == "yes":
            why = None  # cgroup.kill does the job
        if k == "cgroup.kill" and why and feats.get("cgroup.freeze") != "yes":
            why = "(Linux 5.14)"  # and the cgroup.freeze line says what that means
        no_close_range = not feats.get("close_range", "").startswith("yes")
        if k == "close_range CLOSE_RANGE_CLOEXEC" and no_close_range:
            why = None  # said on the close_range line
        lines.append(f"  {k}: {v}" + (f": {why}" if why else ""))
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pardo doctor", description=help_text(__doc__))
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        rep = _supervisor.report()
    except (PardoError, OSError) as e:  # an unavailable forced rung is a finding
        print(f"pardo doctor: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    forced = f" (forced by {rep['forced']!r})" if rep["forced"] else ""
    print(f"isolation: {rep['rung']}{forced}")
    print(f"  why: {rep['reason']}")
    for name, why in rep["stronger_rungs_unavailable"].items():
        print(f"  {name} not used: {why}")
    print(f"  can escape: {rep['escapes']}")
    print(f"cpus usable: {rep['cpus']}")
    prio = rep["supervisor_priority"]
    print(f"supervisor thread: {prio}" + ("" if prio != "normal" else
          " (deadlines may fire late on a saturated machine; root or RLIMIT_RTPRIO/RLIMIT_NICE"
          " lets it rise)"))
    if rep["cannot_start"]:
        print(f"tasks: NONE CAN START here: {rep['cannot_start']}")
    else:
        print("tasks: can start")
    print("kernel features:")
    feats = rep["features"]
    for line in _feature_lines(feats):
        print(line)
    if feats.get("cgroup2 mount", "").startswith("none") and feats.get("pidfd") == "yes":
        # A cgroup v1 host (RHEL 8's default) whose kernel could give the cgroup rung.
        print("advice: booting with systemd.unified_cgroup_hierarchy=1 gives cgroup v2, and "
              "with it the cgroup rung")
    if rep["is_pid1"]:
        print("note: pardo is PID 1 here (a container's init): orphans are re-parented to it, "
              "and only the shepherd rung reaps them; run it under an init (docker run --init, "
              "tini) or with PARDO_ISOLATION=shepherd")
    zombies = rep["features"].get("zombies left unreaped by PID 1", "0")
    if zombies not in ("0", ""):
        print(
            f"note: {zombies} zombie processes are waiting for PID 1 to reap them; this host's "
            "init may not reap orphans. Under the cgroup and pgroup rungs, processes a task "
            "leaves behind are killed but then wait for PID 1; PARDO_ISOLATION=shepherd reaps "
            "every task's tree itself."
        )
    return 0
