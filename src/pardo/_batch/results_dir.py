"""``--results DIR``: each finished job's output saved as GNU parallel lays it out,
``DIR/1/<value>/2/<value>/.../{seq,stdout,stderr}``."""

from __future__ import annotations

import os

from .inputs import encode
from .spool import copy_out


def _path_part(value: str) -> str:
    # GNU parallel's escaping of a value used as a directory name
    return value.replace("\\", "\\\\").replace("/", "\\_") or "\\_"


def results_path(directory, args) -> str:
    """The directory of a job's files under ``directory``: its input values name it."""
    parts = [directory]
    for i, v in enumerate(args, 1):
        parts += [str(i), _path_part(v)]
    return os.path.join(*parts)


def write_results(directory, job, result) -> None:
    """Save ``result``'s output under ``directory`` for ``job`` (its inputs name the path)."""
    d = encode(results_path(directory, job.args))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, b"seq"), "wb") as f:
        f.write(f"{job.seq}\n".encode())
    for stream, name in ((1, b"stdout"), (2, b"stderr")):
        with open(os.path.join(d, name), "wb") as f:
            copy_out(result, stream, f.write)  # spooled in files or held as bytes
