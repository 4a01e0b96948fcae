"""What the store's subcommands share: opening a store with a one-line error."""

from __future__ import annotations

import sys


def open_reader(prog: str, path: str | None):
    """A StoreReader for *path* (or the default store), or None after printing why not."""
    from .._store import StoreError, StoreReader, default_store

    path = path or default_store()
    if path is None:
        print(f"pardo {prog}: no store given, no $PARDO_STORE and no ./pardo.db",
              file=sys.stderr)
        return None
    try:
        return StoreReader(path)
    except StoreError as e:
        print(f"pardo {prog}: {e}", file=sys.stderr)
        return None


def parse_and_open(ap, argv):
    """Parse *argv* with *ap* (its first positional is ``store``); return (args, reader),
    reader None after a one-line error."""
    a = ap.parse_args(argv)
    return a, open_reader(ap.prog.split()[-1], a.store)
