"""``pardo show STORE SEQ``: one task in full, every attempt, with its output."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pardo show",
                                 description="Show one task of a job store in full.")
    ap.add_argument("store")
    ap.add_argument("seq", type=int, help="the task's input number (as {#})")
    from ._common import parse_and_open

    a, reader = parse_and_open(ap, argv)
    if reader is None:
        return 1
    with reader:
        from .._store import show

        sys.stdout.flush()
        found = show(reader, a.seq, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    if not found:
        print(f"pardo show: task {a.seq} has no record in {a.store} (it never completed)",
              file=sys.stderr)
        return 1
    return 0
