"""GNU parallel's ``--pipe``: cut a stream into blocks of whole records, one block per job's
standard input.

The stream is read a block at a time and never held whole: a block is cut at the last
record boundary it holds and what follows the cut starts the next block, so at most one
block (plus one record that is longer than a block) is in memory here. A record ends with
``recend`` (default a newline) and the next starts with ``recstart`` (default nothing); a
boundary is where the two meet. ``--regexp`` makes both regular expressions.

The cuts are GNU parallel's: the buffer is filled up to the block size, the block ends at
the last boundary inside it, and at the end of input what is left is the last block. With
``-N n`` a block is n records whatever its size; with ``-L n`` a record is n lines. A
record longer than the block size grows the block size (by 30% at a time, for the rest of
the stream), as GNU parallel does.
"""

from __future__ import annotations

import math
import re

from .._errors import BatchError

__all__ = ["RoundRobin", "blocks", "parse_block_size", "read_header"]

_UNITS = {"": 1, "k": 10**3, "K": 1 << 10, "m": 10**6, "M": 1 << 20, "g": 10**9, "G": 1 << 30,
          "t": 10**12, "T": 1 << 40}


def parse_block_size(spec: str) -> int:
    """GNU's sizes: ``1M`` is 2**20, ``1m`` 10**6, ``20k`` 20000, ``2Ki`` 2048."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)(i?)", str(spec).strip())
    if not m:
        raise BatchError(f"--block: {spec!r} is not a size such as 1M or 20k")
    mult = (1 << 10 * ("kmgt".index(m.group(2).lower()) + 1)) if m.group(3) else \
        _UNITS[m.group(2)]
    n = int(float(m.group(1)) * mult)
    if n < 1:
        raise BatchError("--block: must be at least 1 byte")
    return n


def _boundary_re(recend: bytes, recstart: bytes, regexp: bool):
    if not regexp:
        recend, recstart = re.escape(recend), re.escape(recstart)
    if not recstart:
        return re.compile(b"(?:" + recend + b")")
    # the boundary is between the end of one record and the start of the next
    return re.compile(b"(?:" + recend + b")(?=" + recstart + b")")


def read_header(fh, header: str, chunk: bytes = b"") -> tuple[bytes, bytes]:
    """``--header N`` (N lines) or ``--header REGEX`` (what it matches at the start):
    (header bytes, bytes read past it)."""
    buf = chunk
    if header.isdigit():
        want = int(header)
        while buf.count(b"\n") < want:
            more = fh.read(1 << 16)
            if not more:
                break
            buf += more
        cut = 0
        for _ in range(want):
            nl = buf.find(b"\n", cut)
            if nl < 0:
                cut = len(buf)
                break
            cut = nl + 1
        return buf[:cut], buf[cut:]
    if header == ":":
        header = r".*\n"  # GNU: ":" means the first line
    pat = re.compile(header.encode("utf-8", "surrogateescape"))
    more = fh.read(1 << 20)
    buf += more
    m = pat.match(buf)
    cut = m.end() if m else 0
    return buf[:cut], buf[cut:]


def blocks(fh, *, block_size: int = 1 << 20, recend: bytes = b"\n", recstart: bytes = b"",
           regexp: bool = False, records: int | None = None, lines: int | None = None,
           start: bytes = b""):
    """Yield the blocks of the binary stream *fh* (``start`` is data already read from it).

    Args:
        block_size: ``--block``: a block ends at the last record boundary within this
            many bytes (a longer record makes a longer block).
        recend, recstart, regexp: ``--recend``, ``--recstart``, ``--regexp``.
        records: ``-N``: exactly this many records per block (the last may have fewer).
        lines: ``-L``: a record is this many lines.
    """
    simple = (recend == b"\n" and not recstart and not regexp) or lines
    if lines:
        recend, recstart = b"\n", b""
    boundary = None if simple else _boundary_re(recend, recstart, regexp)
    buf = start
    eof = False
    if records:
        yield from _by_count(fh, buf, boundary, records * (lines or 1), block_size)
        return
    while True:
        if not eof and len(buf) < block_size:
            chunk = fh.read(block_size - len(buf))
            if chunk:
                buf += chunk
            else:
                eof = True
        if eof:
            if buf:
                yield buf
            return
        cut = _last_boundary(buf, boundary, lines)
        if cut <= 0:
            # No boundary in a full buffer: a record is longer than a block. GNU grows the
            # block size for good, by 30% at a time, until a record fits.
            block_size = math.ceil(block_size * 1.3 + 1)
            continue
        yield buf[:cut]
        buf = buf[cut:]


def _last_boundary(buf, boundary, lines):
    """Offset just past the last record boundary in *buf* (0 when there is none)."""
    if lines:
        ends = [m.end() for m in re.finditer(b"\n", buf)]
        if len(ends) < lines:
            return 0
        return ends[(len(ends) // lines) * lines - 1]
    if boundary is None:
        return buf.rfind(b"\n") + 1
    cut = 0
    for m in boundary.finditer(buf):
        cut = m.end()  # a boundary before the first byte (recstart alone) counts as none
    return cut


def _next_boundary(buf, boundary, pos):
    """Offset just past the first record boundary after *pos*, or -1."""
    if boundary is None:
        nl = buf.find(b"\n", pos)
        return nl + 1 if nl >= 0 else -1
    m = boundary.search(buf, pos)
    if m is not None and m.end() == pos:  # a zero-width boundary where the record starts
        m = boundary.search(buf, pos + 1)
    return m.end() if m is not None else -1


def _by_count(fh, buf, boundary, n, block_size):
    """Blocks of exactly *n* records (``-N``)."""
    pos = 0  # where the search for the next boundary resumes
    count = 0
    eof = False
    while True:
        end = _next_boundary(buf, boundary, pos)
        if end > 0:
            count += 1
            pos = end
            if count == n:
                yield buf[:end]
                buf, pos, count = buf[end:], 0, 0
            continue
        if eof:
            if buf:
                yield buf
            return
        more = fh.read(max(block_size, 1 << 16))
        if more:
            buf += more
        else:
            eof = True


class RoundRobin:
    """``--round-robin``: up to *n* jobs whose stdin stays open, and the blocks written to
    them in turn, each to a job that can take it, as GNU parallel does.

    A thread reads the blocks. The first *n* blocks each start a job (a pipe whose read
    end is the job's stdin: :meth:`jobs` hands them out); every later block goes to the
    next job in turn whose pipe has room, whole (a block is never split between jobs). At
    the end of the input every pipe is closed and the jobs see end of file. A job that
    exits early is dropped (its pipe refuses writes); when none is left, reading stops.
    One block is held at a time.
    """

    def __init__(self, blocks, n):
        import queue
        import threading

        self._blocks = blocks
        self._n = n
        self._fds: queue.Queue = queue.Queue()
        self._writers: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="pardo-round-robin")
        self._started = False
        self._fed_all = False  # the whole input was written into the jobs' pipes

    @property
    def unfed(self) -> bool:
        """Asked once every job is over: whether input was left that no job took."""
        return self._started and not self._fed_all

    def jobs(self):
        """Read ends of the jobs' stdin, as blocks arrive (blocks until then)."""
        if not self._started:
            self._started = True
            self._thread.start()
        for _ in range(self._n):
            fd = self._fds.get()
            if isinstance(fd, BaseException):
                raise fd
            if fd is None:
                return
            yield fd

    def _run(self):
        import os

        try:
            turn = 0
            for block in self._blocks:
                if len(self._writers) < self._n:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    os.set_blocking(w, False)
                    self._writers.append(w)
                    self._fds.put(r)  # the job starts; then it is fed
                    self._write(w, block)
                    continue
                if all(w < 0 for w in self._writers):
                    break  # every job has gone: nobody to feed the rest to
                turn = self._write_to_next(block, turn)
                if turn is None:
                    break
            else:
                # before the pipes close: a job that saw the end of its input was fed all
                self._fed_all = True
        except BaseException as e:  # noqa: BLE001 - handed to the jobs' reader
            self._fds.put(e)
        finally:
            self._fds.put(None)
            for w in self._writers:
                if w >= 0:
                    os.close(w)
            self._writers = [-1] * len(self._writers)

    def _write_to_next(self, block, turn):
        """Write *block* to the first job from *turn* on whose pipe has room; return the
        turn after it, or None when every job has gone."""
        import select

        while True:
            order = self._writers[turn:] + self._writers[:turn]
            live = [w for w in order if w >= 0]
            if not live:
                return None
            _, ready, _ = select.select([], live, [])
            w = next(w for w in live if w in ready)
            i = self._writers.index(w)
            if self._write(w, block):
                return (i + 1) % len(self._writers)

    def _write(self, w, block) -> bool:
        """All of *block* into pipe *w*; False (and the pipe dropped) if its job has gone."""
        import os
        import select

        view = memoryview(block)
        while view:
            try:
                n = os.write(w, view)
            except BlockingIOError:
                select.select([], [w], [])
                continue
            except BrokenPipeError:
                os.close(w)
                self._writers[self._writers.index(w)] = -1
                return False
            view = view[n:]
        return True
