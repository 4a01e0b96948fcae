"""``pardo report STORE -o report.html``: one self-contained HTML page of a run."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="pardo report",
        description="Write a job store as one HTML file that needs nothing else: a timeline "
                    "(a lane per slot, a bar per task), a histogram of durations, counts "
                    "per status and the failures.")
    ap.add_argument("store")
    ap.add_argument("-o", "--output", default="report.html", help="default: report.html")
    from ._common import parse_and_open

    a, reader = parse_and_open(ap, argv)
    if reader is None:
        return 1
    from .._store import write_report

    with reader:
        try:
            size = write_report(reader, a.output)
        except OSError as e:
            print(f"pardo report: cannot write {a.output}: {e.strerror or e}", file=sys.stderr)
            return 1
    print(f"pardo report: wrote {a.output} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return 0
