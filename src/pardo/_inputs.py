"""Input sources: ``:::`` values, ``::::``/``-a`` files, stdin; linked sources (``:::+``),
the cartesian product of the others, ``--colsep`` and ``-N`` grouping.

Everything is an iterator: the first source (the outer loop of the product) is streamed, so
``pardo run cmd :::: million_lines.txt`` holds one line at a time. Later sources of a product
are read into memory because every one of their values is needed once per value of the first;
GNU parallel does the same.

Values are ``str``; bytes that are not UTF-8 are carried as surrogate escapes (PEP 383) and
turned back into the same bytes when a command is built, so any input arrives byte-exact.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from dataclasses import dataclass, field

__all__ = ["InputError", "Source", "records", "group_records", "decode", "encode"]


class InputError(ValueError):
    """An input source cannot be used (unreadable file, empty ``:::``)."""


def decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def encode(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


@dataclass
class Source:
    """One input source.

    Attributes:
        values: the values of a ``:::`` source (None for a file source).
        path: the file of a ``::::``/``-a`` source; ``-`` is stdin.
        linked: True for ``:::+``/``::::+``: read in step with the previous source.
    """

    values: list | None = None
    path: str | None = None
    linked: bool = False
    _fh: object = field(default=None, repr=False)
    _it: object = field(default=None, repr=False)  # the value stream once --header read it

    def open(self, stdin=None):
        """Open a file source now, so that a missing file is reported before any task runs."""
        if self.path is None or self._fh is not None:
            return
        if self.path == "-":
            self._fh = stdin if stdin is not None else sys.stdin.buffer
            return
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise InputError(f"cannot open input file {self.path!r}: {e.strerror}") from None

    def may_block(self) -> bool:
        """True when reading may wait on another process (stdin, a pipe, a terminal)."""
        if self.path is None:
            return False
        if self.path == "-":
            return True
        import stat

        try:
            return not stat.S_ISREG(os.stat(self.path).st_mode)
        except OSError:
            return False

    def close(self):
        if self._fh is not None and self.path != "-":
            self._fh.close()

    def iter_values(self, delimiter: bytes = b"\n"):
        if self.values is not None:
            return iter(self.values)
        if self._it is not None:
            return self._it
        self.open()
        return _split_stream(self._fh, delimiter)

    def take_first(self, delimiter: bytes = b"\n"):
        """Remove and return the first value (``--header``), or None when there is none."""
        if self.values is not None:
            return self.values.pop(0) if self.values else None
        self._it = self.iter_values(delimiter)
        return next(self._it, None)


def _split_stream(fh, delim):
    if delim == b"\n":
        for line in fh:
            yield decode(line[:-1] if line.endswith(b"\n") else line)
        return
    rest = b""
    while True:
        chunk = fh.read(1 << 16)
        if not chunk:
            break
        parts = (rest + chunk).split(delim)
        rest = parts.pop()
        for p in parts:
            yield decode(p)
    if rest:
        yield decode(rest)


_PERL_SPACE = " \t\n\r\f\v"


def records(sources, *, delimiter: bytes = b"\n", colsep: str | None = None,
            trim: str | None = None, eof: str | None = None):
    """Yield one tuple of values per input record.

    Linked sources are zipped with the source they follow (stopping at the shortest, as
    GNU parallel does for ``:::+``); the resulting groups are combined as a cartesian
    product in which the last group varies fastest.

    Args:
        sources: the :class:`Source` list in command-line order.
        delimiter: what ends an input line in files and stdin (``-0`` gives NUL).
        colsep: a regular expression splitting each value into columns (``--colsep``).
        trim: ``--trim``: "l", "r" or "lr"/"rl" strips white space (Perl's ``\s``) at that end of
            every value, or of every column with ``colsep``.
        eof: ``-E``: a value equal to it ends its source (it and what follows are unread).
    """
    groups = []
    for s in sources:
        if s.linked and groups:
            groups[-1].append(s)
        else:
            groups.append([s])

    def group_iter(g):
        its = [s.iter_values(delimiter) for s in g]
        if eof is not None:
            its = [itertools.takewhile(lambda v: v != eof, it) for it in its]
        if len(its) == 1:
            return ((v,) for v in its[0])
        return zip(*its)

    first = group_iter(groups[0])
    rest = [list(group_iter(g)) for g in groups[1:]]
    if rest:
        combos = list(itertools.product(*rest))
        flat = [sum(c, ()) for c in combos]
        it = (a + b for a in first for b in flat)
    else:
        it = first
    if colsep is not None:
        split = re.compile(colsep).split
        it = (tuple(col for v in rec for col in split(v)) for rec in it)
    if trim:
        strip = {"l": str.lstrip, "r": str.rstrip}.get(trim, str.strip)
        it = (tuple(strip(v, _PERL_SPACE) for v in rec) for rec in it)
    return it


def group_records(recs, n: int | None):
    """Group records ``n`` at a time (``-N n``) into flat argument tuples.

    ``n=None`` or 1 passes records through; ``n=0`` reads one record per job but passes no
    arguments (GNU's ``-N0``). The last group may be short.
    """
    if n is None or n == 1:
        return recs
    if n == 0:
        return (() for _ in recs)

    def gen():
        it = iter(recs)
        while True:
            chunk = list(itertools.islice(it, n))
            if not chunk:
                return
            yield sum(chunk, ())

    return gen()
