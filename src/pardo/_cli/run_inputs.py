"""``pardo run``'s GNU option values that shape the inputs and the command before the batch
starts: profiles and ``$PARALLEL``, ``--pipe`` blocks, ``--header`` column names, GNU's
durations, ``-d`` splitting ``:::`` values, ``--results NAME.csv``."""

from __future__ import annotations

import os
import re
import sys

from .._errors import UsageError

__all__ = ["apply_header", "duration", "is_results_file", "pipe_blocks", "pipe_input",
           "profile_words", "split_value"]


def profile_words(argv):
    """Words of the -J/--profile files named at the head of *argv* and of ``$PARALLEL``,
    which GNU parallel reads before the command line (profiles first)."""
    import shlex

    words = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-", "--"):
        a, name = argv[i], None
        if a in ("-J", "--profile") and i + 1 < len(argv):
            name, i = argv[i + 1], i + 1
        elif a.startswith("--profile="):
            name = a.partition("=")[2]
        elif a.startswith("-J") and not a.startswith("--"):
            name = a[2:]
        if name is not None:
            words += shlex.split(_read_profile(name), comments=True)
        i += 1
    env = os.environ.get("PARALLEL")
    if env:
        words += shlex.split(env)
    return words


def _read_profile(name):
    base = os.environ.get("PARALLEL_HOME") or os.path.expanduser("~/.parallel")
    path = name if "/" in name else os.path.join(base, name)
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"-J {name}: cannot read profile {path!r}: {e.strerror}") from None


def pipe_input(opts, sources):
    """The stream --pipe cuts: stdin, or the one -a/:::: file (--pipepart needs one)."""
    files = [s for s in sources if s.path is not None]
    if any(s.values is not None for s in sources) or len(files) > 1:
        raise UsageError("--pipe reads one stream: stdin or a single -a FILE")
    if files and files[0].path != "-":
        return files[0].stream()
    if opts.get("pipe_part"):
        raise UsageError("--pipepart needs -a FILE")
    return sys.stdin.buffer


def pipe_blocks(opts, fh, per_job):
    """The blocks of *fh* (--pipe), each holding the --header lines first."""
    from .._batch import blocks, parse_block_size, read_header

    size = parse_block_size(opts.get("block_size") or "1M")
    lines = opts.get("max_lines_x")
    lines = int(lines) if lines is not None else None
    if lines is not None and lines < 1:
        raise UsageError("-L: must be at least 1")
    esc = opts.get("regexp")  # with --regexp they are regular expressions, else literal

    def sep(key, default):
        v = opts.get(key, default)
        return v.encode("utf-8", "surrogateescape") if esc else \
            v.encode().decode("unicode_escape").encode("latin-1")

    # GNU: --recstart alone means records have no end string
    recend = sep("recend", "" if opts.get("recstart") is not None else "\n")
    recstart = sep("recstart", "")
    head, rest = b"", b""
    if opts.get("header") is not None:
        head, rest = read_header(fh, opts["header"])
    for block in blocks(fh, block_size=size, recend=recend, recstart=recstart,
                        regexp=bool(esc), records=per_job,
                        lines=lines if not per_job else None, start=rest):
        yield head + block if head else block


def is_results_file(name):
    """--results NAME.csv|.tsv|.json: one file of records instead of a directory."""
    return bool(name) and name.endswith((".csv", ".tsv", ".json"))


def apply_header(command, sources, delim, colsep):
    """``--header``: the first value of each source (split by ``--colsep``) names its
    column; ``{name}`` (and ``{name.}``, ``{name/}``...) in the command becomes that
    column's ``{n}``. Returns the command and the names, by column."""
    names = []
    for s in sources:
        first = s.take_first(delim)
        if first is None:
            continue
        cols = re.split(colsep, first) if colsep is not None else [first]
        names += [c.strip(" \t") if colsep is not None else c for c in cols]
    by_len = sorted(((n, i) for i, n in enumerate(names, 1) if n), key=lambda t: -len(t[0]))
    # GNU then names column k after the k-th file source (k counts file sources only),
    # so that `{file1}` works and --results DIR uses the file's name
    files = [(s.path, k) for k, s in enumerate((s for s in sources if s.path is not None), 1)]
    for path, k in files:
        names += [""] * (k - len(names))
        names[k - 1] = path
    out = []
    for w in command:
        for n, i in by_len + files:
            w = re.sub(r"\{" + re.escape(n) + r"(|/|//|\.|/\.)\}",
                       lambda m, i=i: "{" + str(i) + m.group(1) + "}", w)
        out.append(w)
    return out, names


def duration(v):
    """GNU's durations: seconds, or a number with s/m/h/d (``2m``, ``1h30m``); ``N%`` and
    anything else pass through unchanged to be checked where they are used."""
    if v is None or not re.fullmatch(r"(\d+(\.\d*)?[smhd])+", str(v)):
        return v
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return str(sum(float(n) * unit[u] for n, u in re.findall(r"(\d+(?:\.\d*)?)([smhd])", v)))


def split_value(v, delim):
    """A ``:::`` value cut at *delim* (``-d``), as GNU does."""
    parts = v.split(delim)
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing delimiter ends the last record, as in a file
    return parts
