"""Command lines filled up to a length limit: GNU parallel's ``-X``, ``-m``, ``--xargs``,
``-s``/``--max-chars``, and the length check of ``-N``/``-n`` with many arguments.

::

    records ──► CommandLine.push() while GNU's length estimate < limit ──► a job's args
                 (one over: pop it, it starts the next line)
                 at the end of input, once (-X, -m): the last line's records are
                 spread over the job slots, ceil(n / slots) per line from then on

The length is GNU parallel's own estimate (its ``CommandLine::len``), not the length of the
line as rendered: the two agree for most commands, and where they do not (a positional
``{1}`` with many records, ``{#}``) GNU's estimate decides where its lines break, so it
decides pardo's too. The limit is what GNU parallel's probe finds on this kernel, halved
(GNU keeps room for its wrappers and for quoting); both lines of ``--show-limits`` come
from here.
"""

from __future__ import annotations

import math
import os
from collections import deque

from .._errors import InputError
from .template import Field

__all__ = ["LineLength", "command_line_limits", "fill_lines", "show_limits"]

# GNU parallel reserves this much of the longest command line for its own wrapping, then
# halves the rest for hex-quoting (parallel's init: "Usable len = maxlen - 3000 ... div 2").
_WRAP_RESERVE = 3000


def _probe_accepts(length, string_max):
    # GNU's probe runs `sh -c "/bin/echo ccc...c && true"`: a command string of length
    # `length` plus " && true" and the NUL that ends it, all one argument of sh.
    return length + len(" && true") + 1 <= string_max


def command_line_limits():
    """(longest command line, usable length) as GNU parallel finds them here.

    GNU parallel probes by running ever longer command lines (324 * 16**k, then a binary
    search it stops within 1 %); the kernel refuses one argument longer than
    MAX_ARG_STRLEN (32 pages) or an argv + environment past ARG_MAX. The same search run
    against those two limits gives GNU's figure without starting a process.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    string_max = 32 * page
    try:
        string_max = min(string_max, os.sysconf("SC_ARG_MAX") - 4096)
    except (ValueError, OSError):
        pass
    length = 324
    while True:
        lower = length
        length *= 16
        if length > 100_000_000:
            return length, (length - _WRAP_RESERVE) // 2
        if not _probe_accepts(length, string_max):
            break
    lower, upper = lower, length
    while not (lower == upper or lower == upper - 1 or lower / upper > 0.99):
        middle = int((upper - lower) * 0.5 + lower)
        if _probe_accepts(middle, string_max):
            lower = middle
        else:
            upper = middle
    return lower, (lower - _WRAP_RESERVE) // 2


def show_limits(usable):
    """GNU parallel's ``--show-limits`` text (it goes on with the run afterwards)."""
    longest, _ = command_line_limits()
    return (f"Maximal size of command: {longest}\n"
            f"Maximal usable size of command: {usable}\n\n"
            "Execution will continue now, and it will try to read its input\n"
            "and run commands; if this is not what you wanted to happen, please\n"
            "press CTRL-D or CTRL-C\n")


def _fields(groups):
    for g in groups:
        if not isinstance(g, str):
            yield from (p for p in g if isinstance(p, Field))


class LineLength:
    """GNU parallel's estimate of a command line's length as records are added to it.

    Args:
        template: the command template (its words, joined by spaces, as GNU joins them).
        context: context replacement (``-X``, ``-N``): a word holding ``{}`` is repeated
            per argument.
        also: templates of other options whose replacement strings GNU counts once each
            (``--tagstring``, ``--tag``'s ``{}``, ``--results``).
        bar: ``--bar`` (GNU counts ``{}`` for it).
        quote_all: ``-q`` (GNU triples its estimate and leaves values unquoted in it).
    """

    def __init__(self, template, *, context, also=(), bar=False, quote_all=False):
        self._template = template
        self._context = context
        self._factor = 3 if quote_all else 1
        self._quote = template.quote and not quote_all
        text_len = 0
        self.context_len = 0
        self.context_groups = 0
        counts: dict = {}
        for g in template.groups:
            if isinstance(g, str):
                text_len += len(g)
                continue
            word = [p for p in g]
            chunk = sum(len(p) if isinstance(p, str) else 0 for p in word)
            if any(isinstance(p, Field) for p in word):
                self.context_len += chunk
                self.context_groups += 1
                for p in word:
                    if isinstance(p, Field):
                        counts[p] = counts.get(p, 0) + 1
            else:
                text_len += chunk
        self.fixed = text_len  # the words without their context, and the blanks between
        # GNU marks the strings of other options as seen once (||= 1); when the command
        # itself names none, GNU appends {} after that mark and counts it on top
        appended = template.appended
        for t in also:
            for f in _fields(t.groups):
                if f not in counts:
                    counts[f] = 1
                elif appended and f == Field(None, ""):
                    counts[f] += 1
        if bar:
            f = Field(None, "")
            counts[f] = counts.get(f, 0) + (1 if appended or f not in counts else 0)
        self.counts = counts
        self.reset()

    def reset(self):
        """An empty command line."""
        self.lengths = dict.fromkeys(self.counts, 0)
        self.records = 0
        self.width = 0  # values per record (GNU's recargs is records * width)

    def _record_lengths(self, record, seq):
        out = {}
        t = self._template
        for f in self.counts:
            if f.op in ("#", "%", "##"):
                # GNU's {#} and {%} are positional {1} expressions: counted per record
                out[f] = len(str(seq)) if record else 0
            elif f.pos is not None:
                i = f.pos - 1 if f.pos > 0 else len(record) + f.pos
                out[f] = len(t.value_text(f, record[i], self._quote, seq, record)) \
                    if 0 <= i < len(record) else 0
            else:
                out[f] = sum(len(t.value_text(f, v, self._quote, seq, record)) for v in record)
        return out

    def push(self, record, seq):
        """Add one record; return what to give :meth:`pop` to take it out again."""
        add = self._record_lengths(record, seq)
        for f, n in add.items():
            self.lengths[f] += n
        if not self.records:
            self.width = len(record)
        self.records += 1
        return add

    def pop(self, added):
        for f, n in added.items():
            self.lengths[f] -= n
        self.records -= 1

    def __len__(self):
        args = self.records * self.width
        n = self.fixed
        if self._context:
            n += args * self.context_len
            n += sum(self.lengths[f] * c for f, c in self.counts.items())
            n += (args - 1) * self.context_groups
        else:
            n += self.context_len
            n += sum((args - 1 + self.lengths[f]) * c for f, c in self.counts.items())
        return n * self._factor


class _Lookahead:
    """Records with put-back, and a look at whether any is left (it may block: GNU's
    end-of-input test reads ahead too)."""

    def __init__(self, it):
        self._it = iter(it)
        self._back: deque = deque()
        self.taken = 0  # records handed out for good (GNU's "at input N")

    def empty(self):
        if self._back:
            return False
        try:
            self._back.append(next(self._it))
        except StopIteration:
            return True
        return False

    def get(self):
        self.taken += 1
        return self._back.popleft() if self._back else next(self._it)

    def unget(self, records):
        self.taken -= len(records)
        self._back.extendleft(reversed(records))


def fill_lines(recs, length: LineLength, max_len: int, *, max_args=None, spread_over=None):
    """Group records into the argument tuples of command lines, as GNU parallel does.

    Each line takes records while GNU's length estimate stays under *max_len* and it has
    fewer than *max_args*. With *spread_over* (``-X``/``-m``: a function giving the number
    of job slots, asked when the end of the input is reached), the first line that reaches
    the end of the input is spread over the job slots: its records are cut into lines of
    ``ceil(n / slots)``, and no later line takes more. Streams: one line of records is held.

    Raises:
        InputError: a single record makes a line of *max_len* or more.
    """
    q = _Lookahead(recs)
    spread = spread_over is None
    seq = 0
    while not q.empty():
        seq += 1
        length.reset()
        line, added = [], []
        while not q.empty():
            rec = q.get()
            line.append(rec)
            added.append(length.push(rec, seq))
            if len(length) >= max_len:
                if len(line) > 1:
                    length.pop(added.pop())
                    q.unget([line.pop()])
                    break
                raise InputError(_too_long(len(length), max_len, q.taken, rec))
            if max_args is not None and len(line) >= max_args:
                break
        if not spread and q.empty():
            spread = True
            if len(line) > 1:
                max_args = math.ceil(len(line) / spread_over())
                q.unget(line[max_args:])
                line = line[:max_args]
        yield sum(line, ())


def _too_long(n, max_len, at, rec):
    args = " ".join(rec)
    if len(args) > 50:
        args = args[:50] + "..."
    return f"command line too long ({n} >= {max_len}) at input {at - 1}: {args}"
