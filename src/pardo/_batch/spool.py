"""Task output spooled to temporary files, so that grouped output never fills memory.

``pardo run`` in --group mode prints each task's output at once when the task ends, so the
output has to wait somewhere meanwhile. Held in memory, six tasks printing a flood took 3 GB
of RSS; here each stream of a task is written straight into an unnamed temporary file
(``O_TMPFILE``: nothing to clean up, gone with its last fd), as GNU parallel does.

- :class:`SpoolFiles` hands out the two files for one task attempt; the engine writes into
  them as into any ``stdout=``/``stderr=`` fd (no pipe, nothing read by pardo while it runs).
  Files are reused: making and freeing an inode costs about 100 us each on ext4, a tenth of
  a whole task start, while emptying a used one is a truncate and an empty one costs nothing.
  Reuse is safe only where a task is over when its whole tree is gone (the cgroup and
  shepherd rungs): under pgroup an escaped process could still write into a file that
  already serves another task, so there every attempt gets new files.
- :meth:`SpoolFiles.collect` runs when the task is over: a small stream (most of them) is
  read into the Result's ``stdout``/``stderr`` bytes and its file goes back to be reused;
  a big one stays a file, in ``Result.spool``, until :meth:`SpoolFiles.release`.
- :meth:`SpoolFiles.hand_over` gives a job store its own fds of a result's big streams (the
  store links or copies the file beside it rather than reading it into memory); a file
  handed over is never reused, since it may have become the store's named file.
- :func:`copy_out` writes a stream to an fd, from bytes or from its file, in bounded
  chunks, with an optional tag per line and a byte limit.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["SpoolFiles", "copy_out", "size_of", "INLINE_MAX"]

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


class SpoolFiles:
    """The temporary files of a batch's tasks, handed out two at a time and reused.

    Args:
        reuse: hand a file out again once its task is over (see the module docstring).
        keep: how many idle files to keep for reuse at most.
        directory: where the files live (default: ``tempfile.gettempdir()``).
    """

    def __init__(self, reuse, keep, directory=None):
        self._dir = directory or tempfile.gettempdir()
        self._reuse = reuse
        self._keep = keep
        self._idle: list = []  # empty files, offset 0
        self._handed: set = set()  # fds whose file a store took: closed, never reused

    def take(self):
        """Two files (stdout, stderr) for one task attempt: their fds."""
        idle = self._idle
        out = idle.pop() if idle else _tmpfile(self._dir)
        try:
            return out, idle.pop() if idle else _tmpfile(self._dir)
        except BaseException:
            os.close(out)
            raise

    def _give_back(self, fd, size):
        if fd in self._handed:
            self._handed.discard(fd)
            os.close(fd)
        elif self._reuse and len(self._idle) < self._keep:
            if size:
                # the task's fd shares our file offset: back to 0 as well as empty
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            self._idle.append(fd)
        else:
            os.close(fd)

    def collect(self, result, fds):
        """Attach the output of a finished task attempt, written into *fds*, to *result*.

        Small streams become ``result.stdout``/``result.stderr`` bytes; bigger ones are
        left in ``result.spool`` as ``[(fd, size) or None, (fd, size) or None]`` for
        :func:`copy_out`, until :meth:`release`.
        """
        spool = [None, None]
        for i, fd in enumerate(fds):
            size = os.fstat(fd).st_size
            if size > INLINE_MAX:
                spool[i] = (fd, size)
                continue
            if size:
                data = os.pread(fd, size, 0)
                if i == 0:
                    result.stdout = data
                else:
                    result.stderr = data
            self._give_back(fd, size)
        result.spool = spool if spool != [None, None] else None

    def hand_over(self, result):
        """The big streams of *result* for a job store: ``[(fd, size) or None, ...]`` with
        fds of the store's own (it closes them), or None when both streams are in memory.
        The files stay readable here until :meth:`release`, and are not reused after."""
        spool = getattr(result, "spool", None)
        if not spool:
            return None
        out = []
        for s in spool:
            if s is None:
                out.append(None)
                continue
            self._handed.add(s[0])
            out.append((os.dup(s[0]), s[1]))
        return out

    def release(self, result):
        """Take back the files a result still holds (safe to call twice)."""
        spool = getattr(result, "spool", None)
        if spool:
            result.spool = None
            for s in spool:
                if s is not None:
                    self._give_back(*s)

    def discard(self, fds):
        """Files of an attempt whose output nobody will read (the batch is ending)."""
        for fd in fds:
            self._handed.discard(fd)
            os.close(fd)

    def close(self):
        for fd in self._idle:
            os.close(fd)
        self._idle.clear()


def size_of(result, stream):
    """Bytes in stream 1 (stdout) or 2 (stderr) of *result*, spooled or not."""
    spool = getattr(result, "spool", None)
    if spool and spool[stream - 1] is not None:
        return spool[stream - 1][1]
    return len((result.stdout if stream == 1 else result.stderr) or b"")


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
