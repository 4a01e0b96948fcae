"""``--results DIR``: each finished job's output saved as GNU parallel lays it out,
``DIR/1/<value>/2/<value>/.../{seq,stdout,stderr}``."""

from __future__ import annotations

import os
import re

from .inputs import encode
from .spool import copy_out


def _path_part(value: str) -> str:
    # GNU parallel's escaping of a value used as a directory name
    return value.replace("\\", "\\\\").replace("/", "\\_") or "\\_"


def _perl_number(name):
    # what Perl's <=> sees in a string: its leading number, or 0
    m = re.match(r"\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))", name)
    return float(m.group(1)) if m else 0.0


def results_path(directory, args, names=None, width=None) -> str:
    """The directory of a job's files under ``directory``: its input values name it, each
    after its column's name (``--header``: *names*, by column; else its number). As GNU
    orders them within each record (*width* values; default: all of them are one): by
    name, numbers first by value."""
    width = width or len(args) or 1
    parts = [directory]
    for start in range(0, len(args), width):
        cols = [(names[i] if names and i < len(names) and names[i] else str(i + 1), v)
                for i, v in enumerate(args[start:start + width])]
        cols.sort(key=lambda c: (_perl_number(c[0]), c[0]))
        for name, v in cols:
            parts += [name, _path_part(v)]
    return os.path.join(*parts)


def write_results(directory, job, result, names=None, width=None) -> None:
    """Save ``result``'s output under ``directory`` for ``job`` (its inputs name the path,
    after the --header *names* of their columns; *width*: values per record)."""
    d = encode(results_path(directory, job.args, names, width))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, b"seq"), "wb") as f:
        f.write(f"{job.seq}\n".encode())
    for stream, name in ((1, b"stdout"), (2, b"stderr")):
        with open(os.path.join(d, name), "wb") as f:
            copy_out(result, stream, f.write)  # spooled in files or held as bytes
