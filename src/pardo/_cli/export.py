"""``pardo export STORE --format jsonl|csv|joblog``: every task attempt, one per record."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="pardo export",
        description="Write a job store's records: JSON lines or CSV (every attempt), or GNU "
                    "parallel's joblog (every completed task).")
    ap.add_argument("store")
    ap.add_argument("--format", "-f", choices=("jsonl", "csv", "joblog"), default="jsonl")
    ap.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    from ._common import parse_and_open

    a, reader = parse_and_open(ap, argv)
    if reader is None:
        return 1
    from .._store import export

    with reader:
        if a.output == "-":
            export(reader, a.format, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return 0
        tmp = a.output + ".part"
        with open(tmp, "wb") as f:
            export(reader, a.format, f)
        os.replace(tmp, a.output)  # a reader of the file never sees half of it
    return 0
