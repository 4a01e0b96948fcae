"""``pardo status [STORE]``: how a run went, or how it is going (``--watch``)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="pardo status",
        description="Counts per status, durations, throughput, the slowest tasks, failures "
                    "by reason and deadline lateness of a job store.")
    ap.add_argument("store", nargs="?", help="the store (default: $PARDO_STORE or ./pardo.db)")
    ap.add_argument("--watch", action="store_true",
                    help="redraw while a run writes the store, until it ends (or Ctrl-C)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    from ._common import parse_and_open

    a, reader = parse_and_open(ap, argv)
    if reader is None:
        return 1
    with reader:
        if a.json:
            print(json.dumps({"runs": reader.runs(), **reader.summary()}, indent=1))
            return 0
        from rich.console import Console

        from .._store import status_renderable

        console = Console()
        if not a.watch:
            console.print(status_renderable(reader))
            return 0
        return _watch(console, reader, max(0.1, a.interval))


def _watch(console, reader, interval):
    from rich.live import Live

    from .._store import status_renderable

    # The store is another process's file: re-read it at a bounded rate (its writer keeps
    # no channel to us); stop after the redraw that follows the writer's end.
    try:
        with Live(status_renderable(reader), console=console, auto_refresh=False) as live:
            while True:
                active = reader.writer_active()
                live.update(status_renderable(reader), refresh=True)
                if not active:
                    return 0
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    finally:
        sys.stdout.flush()
