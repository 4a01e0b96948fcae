"""``pardo doctor``: which isolation rung is in force here, why the stronger ones are not,
and what the kernel offers."""

from __future__ import annotations

import argparse
import json
import sys

from .. import _supervisor
from .._errors import PardoError
from . import help_text


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
