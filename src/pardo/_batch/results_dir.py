"""``--results DIR``: each finished job's output saved as GNU parallel lays it out,
``DIR/1/<value>/2/<value>/.../{seq,stdout,stderr}``."""

from __future__ import annotations

import os

from .inputs import encode


def _path_part(value: str) -> str:
    # GNU parallel's escaping of a value used as a directory name
    return value.replace("\\", "\\\\").replace("/", "\\_") or "\\_"


def write_results(directory, job, result) -> None:
    """Save ``result``'s output under ``directory`` for ``job`` (its inputs name the path)."""
    parts = [directory]
    for i, v in enumerate(job.args, 1):
        parts += [str(i), _path_part(v)]
    d = os.path.join(*[encode(p) for p in parts])
    os.makedirs(d, exist_ok=True)
    for name, data in ((b"seq", f"{job.seq}\n".encode()), (b"stdout", result.stdout or b""),
                       (b"stderr", result.stderr or b"")):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
