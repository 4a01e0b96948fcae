"""Task output spooled to temporary files, so that grouped output never fills memory.

``pardo run`` in --group mode prints each task's output at once when the task ends, so the
output has to wait somewhere meanwhile. Held in memory, six tasks printing a flood took 3 GB
of RSS; here each stream of a task is written straight into an unnamed temporary file
(``O_TMPFILE``: nothing to clean up, gone with its last fd), as GNU parallel does.

- :func:`open_spool` makes the two files for one task attempt; the engine writes into them
  as into any ``stdout=``/``stderr=`` fd (no pipe, nothing read by pardo while it runs).
- :func:`collect` runs when the task is over: a small stream (most of them) is read into the
  Result's ``stdout``/``stderr`` bytes and its file closed, so a long run does not hold two
  fds per finished task; a big one stays a file, in ``Result.spool``.
- :func:`copy_out` writes a stream to an fd, from bytes or from its file, in bounded
  chunks, with an optional tag per line and a byte limit.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["open_spool", "collect", "close", "copy_out", "INLINE_MAX"]

# A stream up to this size is read back into memory when its task ends; bigger ones are
# copied from their file when printed. Bounds what a finished task holds in memory.
INLINE_MAX = 1 << 16
_CHUNK = 1 << 20


def _tmpfile(directory):
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        # a file system without O_TMPFILE: a named file, unlinked at once
        fd, path = tempfile.mkstemp(prefix="pardo-spool-", dir=directory)
        os.unlink(path)
        return fd


def open_spool(directory=None):
    """Two new temporary files (stdout, stderr) for one task attempt: their fds."""
    d = directory or tempfile.gettempdir()
    out = _tmpfile(d)
    try:
        return out, _tmpfile(d)
    except BaseException:
        os.close(out)
        raise


def collect(result, fds):
    """Attach the spooled output of a finished task to *result*.

    Small streams become ``result.stdout``/``result.stderr`` bytes (their files closed);
    bigger ones are left in ``result.spool`` as ``[(fd, size) or None, (fd, size) or None]``
    for :func:`copy_out`, until :func:`close`.
    """
    spool = [None, None]
    for i, fd in enumerate(fds):
        size = os.fstat(fd).st_size
        if size > INLINE_MAX:
            spool[i] = (fd, size)
            continue
        data = os.pread(fd, size, 0) if size else b""
        os.close(fd)
        if i == 0:
            result.stdout = data
        else:
            result.stderr = data
    result.spool = spool if spool != [None, None] else None


def close(result):
    """Close the files a result still holds (safe to call twice)."""
    spool = getattr(result, "spool", None)
    if spool:
        result.spool = None
        for s in spool:
            if s is not None:
                os.close(s[0])


def size_of(result, stream):
    """Bytes in stream 1 (stdout) or 2 (stderr) of *result*, spooled or not."""
    spool = getattr(result, "spool", None)
    if spool and spool[stream - 1] is not None:
        return spool[stream - 1][1]
    return len(result.stdout if stream == 1 else result.stderr)


def _chunks(result, stream, limit):
    spool = getattr(result, "spool", None)
    if spool and spool[stream - 1] is not None:
        fd, size = spool[stream - 1]
        size = min(size, limit)
        off = 0
        while off < size:
            data = os.pread(fd, min(_CHUNK, size - off), off)
            if not data:
                return
            off += len(data)
            yield data
    else:
        data = result.stdout if stream == 1 else result.stderr
        if data:
            yield data[:limit]


def copy_out(result, stream, write, tag=None, limit=None):
    """Write stream 1 or 2 of *result* through ``write(bytes)``, at most *limit* bytes of
    it, each line prefixed with *tag* when given. Memory: one chunk at a time."""
    limit = size_of(result, stream) if limit is None else limit
    if tag is None:
        for data in _chunks(result, stream, limit):
            write(data)
        return
    at_line_start = True
    for data in _chunks(result, stream, limit):
        lines = data.split(b"\n")
        last = lines.pop()
        out = []
        for ln in lines:
            out.append((tag if at_line_start else b"") + ln + b"\n")
            at_line_start = True
        if last:
            out.append((tag if at_line_start else b"") + last)
            at_line_start = False
        write(b"".join(out))
