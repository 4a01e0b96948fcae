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
import math
import os
import sys
from dataclasses import dataclass, field

from .._errors import InputError
from .options import compile_colsep

__all__ = ["Source", "records", "group_records", "arg_groups", "count_jobs", "decode", "encode"]


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

    def stream(self):
        """The source's file, opened, as a binary stream (``--pipe`` reads it whole)."""
        self.open()
        return self._fh

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

    def count_values(self, delimiter: bytes = b"\n") -> int | None:
        """How many values this source holds, counted without keeping them (for a progress
        total): ``:::`` values, or the records of a regular file read in 1 MiB chunks.
        None for stdin, a pipe, or a delimiter longer than one byte."""
        if self.values is not None:
            return len(self.values)
        if self.path == "-" or len(delimiter) != 1 or self.may_block():
            return None
        n = 0
        last = b""
        try:
            with open(self.path, "rb", buffering=0) as f:
                while chunk := f.read(1 << 20):
                    n += chunk.count(delimiter)
                    last = chunk[-1:]
        except OSError:
            return None
        return n + (1 if last and last != delimiter else 0)  # a last record without one

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
    r"""Yield one tuple of values per input record.

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
        split = compile_colsep(colsep).split
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


def _as_str(v):
    if isinstance(v, bytes):
        return decode(v)
    return v if isinstance(v, str) else str(v)


def _as_record(item):
    if isinstance(item, (tuple, list)):
        return tuple(_as_str(v) for v in item)
    return (_as_str(item),)


def _all_sources(inputs):
    if isinstance(inputs, Source):
        return [inputs]
    if isinstance(inputs, list) and inputs and all(isinstance(s, Source) for s in inputs):
        return inputs
    return None


def arg_groups(inputs, *, delimiter: bytes = b"\n", colsep: str | None = None,
               max_args: int | None = None, skip_empty: bool = False,
               trim: str | None = None, eof: str | None = None, fill=None):
    """The argument tuple of each job, in job order, read lazily.

    Args:
        inputs: a :class:`Source` or a list of them (the command line's ``:::``/``::::``),
            or any iterable of values (str, bytes, paths, numbers) or of tuples of values.
        delimiter: what ends an input record in files and stdin.
        colsep: a regular expression splitting each value into columns.
        max_args: ``-N``: that many records per job.
        skip_empty: ``-r``: leave out records whose values are all blank.
        trim, eof: ``--trim`` and ``-E`` for :class:`Source` inputs (see :func:`records`).
        fill: groups the records instead of ``max_args`` (``-X``, ``-m``: a function of the
            record iterator, such as :func:`pardo._batch.xargs.fill_lines` bound to its
            length and limit).
    """
    sources = _all_sources(inputs)
    if sources is not None:
        recs = records(sources, delimiter=delimiter, colsep=colsep, trim=trim, eof=eof)
    else:
        recs = (_as_record(i) for i in inputs)
        if colsep is not None:
            split = compile_colsep(colsep).split
            recs = (tuple(c for v in r for c in split(v)) for r in recs)
    if skip_empty:
        recs = (r for r in recs if any(v.strip() for v in r))
    if fill is not None:
        return fill(recs)
    return group_records(recs, max_args)


def count_jobs(inputs, max_args: int | None = None, delimiter: bytes | None = None
               ) -> int | None:
    """How many jobs :func:`arg_groups` will give, when that is known without reading the
    inputs: ``:::`` sources (files stream) or a sized collection of values; else None.
    With a *delimiter*, the records of regular files are counted too, keeping none of them
    (for a progress bar's total)."""
    sources = _all_sources(inputs)
    if sources is not None:
        if delimiter is None and any(s.values is None for s in sources):
            return None
        counts = [s.count_values(delimiter or b"\n") for s in sources]
        if None in counts:
            return None
        groups = []
        for s, k in zip(sources, counts):
            if s.linked and groups:
                groups[-1] = min(groups[-1], k)
            else:
                groups.append(k)
        n = math.prod(groups)
    elif isinstance(inputs, (list, tuple, range)):
        n = len(inputs)
    else:
        return None
    return -(-n // max_args) if max_args else n
