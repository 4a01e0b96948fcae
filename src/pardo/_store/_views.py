"""What the store's readers print: ``pardo status`` (a rich table), ``pardo show`` (one task
in full) and ``pardo export`` (JSON lines, CSV, GNU parallel's joblog)."""

from __future__ import annotations

import base64
import codecs
import csv
import datetime
import io
import json
import os
import types

from .._errors import UsageError
from .._result import Status, signal_name
from ._read import StoredOutput, StoreReader

__all__ = ["EXPORT_FIELDS", "export", "show", "show_text", "status_renderable"]

# JSON lines and CSV columns, in this order. Outputs are text when they are UTF-8; other
# bytes go into ``stdout_base64`` / ``stderr_base64`` instead, so nothing is lost.
EXPORT_FIELDS = ("seq", "args", "command", "attempt", "final", "status", "returncode",
                 "signal", "slot", "cpus", "host", "started_at", "duration", "deadline", "late",
                 "cpu_user", "cpu_sys", "max_rss", "error", "stdout", "stderr",
                 "output_truncated", "run")


def _when(t):
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _secs(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f} s"


def _short(cmd, width=60):
    cmd = (cmd or "").replace("\n", " ")
    return cmd if len(cmd) <= width else cmd[: width - 3] + "..."


def status_renderable(reader: StoreReader):
    """``pardo status``: the store's runs and tasks, as one rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    s = reader.summary()
    runs = reader.runs()
    active = reader.writer_active()
    parts = []
    head = Text()
    head.append(f"{reader.path}", style="bold")
    if runs:
        last = runs[-1]
        state = ("running" if active and last["ended"] is None else
                 last["ended"] or "died (no end recorded; --resume runs the rest)")
        head.append(f"  {len(runs)} run{'s' if len(runs) != 1 else ''}, last started "
                    f"{_when(last['started_at'])} on {last['host']} ({state})")
        head.append(f"\ncommand: {last['template']}")
    parts.append(head)

    t = Table(title=None, show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("tasks", justify="right")
    for st in _STATUS_ORDER:
        if st in s["counts"]:
            t.add_column(st, justify="right", style=_STYLE.get(st, ""))
    t.add_column("attempts", justify="right")
    t.add_column("throughput", justify="right")
    t.add_row(str(s["tasks"]), *[str(s["counts"][st]) for st in _STATUS_ORDER
                                 if st in s["counts"]],
              str(s["attempts"]),
              f"{s['throughput']:.1f}/s" if s["throughput"] else "-")
    parts.append(t)

    d, late = s["duration"], s["lateness"]
    t = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    for c in ("", "p50", "p95", "p99", "max"):
        t.add_column(c, justify="right")
    t.add_row("duration", _secs(d["p50"]), _secs(d["p95"]), "", _secs(d["max"]))
    if late["n"]:
        t.add_row(f"deadline lateness ({late['n']} timeouts)", _ms(late["p50"]), "",
                  _ms(late["p99"]), _ms(late["max"]))
    parts.append(t)

    if s["slowest"]:
        t = Table(title="slowest", title_justify="left", box=None, header_style="bold",
                  pad_edge=False)
        for c, j in (("seq", "right"), ("duration", "right"), ("status", "left"),
                     ("command", "left")):
            t.add_column(c, justify=j)
        for r in s["slowest"]:
            t.add_row(str(r["seq"]), _secs(r["duration"]), r["status"], _short(r["command"]))
        parts.append(t)
    if s["failures"]:
        t = Table(title="failures by reason", title_justify="left", box=None,
                  header_style="bold", pad_edge=False)
        for c, j in (("count", "right"), ("reason", "left"), ("tasks", "left")):
            t.add_column(c, justify=j)
        for f in s["failures"]:
            more = ", ..." if f["count"] > len(f["seqs"]) else ""
            t.add_row(str(f["count"]), _short(f["reason"], 70),
                      ", ".join(f"#{x}" for x in f["seqs"]) + more, style="red")
        parts.append(t)
    return Group(*parts)


def _ms(x):
    return "-" if x is None else f"{x * 1000:.1f} ms"


_STATUS_ORDER = ("ok", "failed", "timeout", "signaled", "error", "cancelled", "crashed")
_STYLE = {"ok": "green", "failed": "red", "timeout": "yellow", "signaled": "magenta",
          "error": "red", "cancelled": "dim", "crashed": "magenta"}


def show_text(reader: StoreReader, seq: int) -> str | None:
    """``pardo show`` as a string: every attempt of task *seq*, with its output; None if
    unknown. (The whole output in memory: :func:`show` streams it.)"""
    buf = io.BytesIO()
    if not show(reader, seq, buf):
        return None
    return buf.getvalue().decode("utf-8", "surrogateescape")


def show(reader: StoreReader, seq: int, out) -> bool:
    """``pardo show``: write every attempt of task *seq*, with its output, to the binary
    stream *out*; False if the task has no record. An output kept in a file is copied a
    chunk at a time, so memory stays small whatever its size."""
    attempts = reader.task(seq, file_outputs=True)
    if not attempts:
        return False
    w = _TextOut(out)
    for a in attempts:
        head = f"task {a['seq']}, attempt {a['attempt']}"
        head += "" if a["final"] else " (an earlier attempt)"
        w.line(head)
        how = a["status"]
        if a["returncode"] is not None:
            how += f", exit {a['returncode']}"
        if a["signal"]:
            how += f", {signal_name(a['signal'])}"
        rows = [
            ("command", a["command"]),
            ("inputs", json.dumps(a["args"], ensure_ascii=False)),
            ("status", how),
            ("error", a["error"]),
            ("started", _when(a["started_at"])),
            ("duration", _secs(a["duration"], 6)),
            ("deadline", None if a["deadline"] is None else f"{a['deadline']:g} s"
             + ("" if a["late"] is None else f", tree dead {a['late'] * 1000:.1f} ms after it")),
            ("slot", None if a["slot"] is None else str(a["slot"])),
            ("cpus", None if not a["cpus"] else ",".join(map(str, a["cpus"]))),
            ("host", a["host"]),
            ("cpu", f"user {a['cpu_user']:.3f} s, sys {a['cpu_sys']:.3f} s"
             if a["cpu_user"] is not None else None),
            ("peak rss", None if not a["max_rss"] else f"{a['max_rss'] / 1048576:.1f} MiB"),
        ]
        for k, v in rows:
            if v is not None:
                w.line(f"  {k + ':':<10}{v}")
        for name in ("stdout", "stderr"):
            data = a[name]
            trunc = " (cut at --max-output)" if a["output_truncated"] else ""
            w.line(f"  --- {name} ({len(data)} bytes){trunc}")
            if data:
                decoder = codecs.getincrementaldecoder("utf-8")("replace")
                last = b""
                for chunk in _chunks(data):
                    w.text(decoder.decode(chunk))
                    last = chunk[-1:]
                w.text(decoder.decode(b"", True))
                w.line("" if last == b"\n" else "\n(no newline at end)")
    w.end()
    return True


class _TextOut:
    """Text to a binary stream, as UTF-8, with the trailing newlines of the whole held
    back so that it ends with exactly one (as ``text.rstrip("\\n") + "\\n"`` would)."""

    def __init__(self, out):
        self._out = out
        self._newlines = 0

    def text(self, s):
        if not s:
            return
        body = s.rstrip("\n")
        if body:
            if self._newlines:
                self._out.write(b"\n" * self._newlines)
            self._out.write(body.encode("utf-8", "surrogateescape"))
            self._newlines = 0
        self._newlines += len(s) - len(body)

    def line(self, s):
        self.text(s + "\n")

    def end(self):
        self._out.write(b"\n")
        self._newlines = 0


def _chunks(data):
    """The bytes of an output: inline ones whole, a file's a chunk at a time."""
    if isinstance(data, StoredOutput):
        yield from data.chunks()
    elif data:
        yield data


def _scan(stored: StoredOutput) -> tuple[bool, bool]:
    """(whether the file is UTF-8, whether it holds a character that CSV must quote), read
    a chunk at a time: what export must know before it writes the file's first byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    quote = False
    try:
        for chunk in stored.chunks():
            decoder.decode(chunk)
            quote = quote or any(c in chunk for c in (b",", b'"', b"\r", b"\n"))
        decoder.decode(b"", True)
    except UnicodeDecodeError:
        return False, False  # base64: nothing to quote
    return True, quote


def _text_chunks(stored: StoredOutput):
    """A UTF-8 file's text, a chunk at a time (a character split between two reads is
    joined)."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    for chunk in stored.chunks():
        yield decoder.decode(chunk)
    yield decoder.decode(b"", True)


def _base64_chunks(stored: StoredOutput):
    """A file's base64 text, a chunk at a time (each but the last encodes a multiple of 3
    bytes, so the pieces join into the encoding of the whole)."""
    carry = b""
    for chunk in stored.chunks():
        data = carry + chunk
        cut = len(data) - len(data) % 3
        carry = data[cut:]
        yield base64.b64encode(data[:cut]).decode("ascii")
    if carry:
        yield base64.b64encode(carry).decode("ascii")


def _jsonable(a: dict) -> dict:
    d = {k: a[k] for k in EXPORT_FIELDS}
    for name in ("stdout", "stderr"):
        try:
            d[name] = a[name].decode("utf-8")
        except UnicodeDecodeError:
            d[name] = None
            d[name + "_base64"] = base64.b64encode(a[name]).decode("ascii")
    return d


def _streamed(a: dict) -> dict:
    """The export record of an attempt with an output kept in a file: as
    :func:`_jsonable`, where a file's value is ``(kind, stored, needs CSV quotes)``, *kind*
    ``"text"`` (under its own key) or ``"base64"`` (its key null, the ``_base64`` key
    last), to be written a chunk at a time."""
    d = {k: a[k] for k in EXPORT_FIELDS}
    tail = {}
    for name in ("stdout", "stderr"):
        data = a[name]
        if isinstance(data, StoredOutput):
            utf8, quote = _scan(data)
            if utf8:
                d[name] = ("text", data, quote)
            else:
                d[name] = None
                tail[name + "_base64"] = ("base64", data, False)
            continue
        try:
            d[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            d[name] = None
            tail[name + "_base64"] = base64.b64encode(data).decode("ascii")
    d.update(tail)
    return d


def _is_file(v):
    return type(v) is tuple


def _write_json_streamed(d: dict, out) -> None:
    """One JSON line, the same text as ``json.dumps(record, ensure_ascii=False)``, with
    file-kept outputs escaped a chunk at a time."""
    enc = "utf-8", "surrogateescape"
    sep = "{"
    for k, v in d.items():
        key = sep + json.dumps(k) + ": "
        sep = ", "
        if not _is_file(v):
            out.write((key + json.dumps(v, ensure_ascii=False)).encode(*enc))
            continue
        kind, stored, _ = v
        out.write((key + '"').encode(*enc))
        pieces = _text_chunks(stored) if kind == "text" else _base64_chunks(stored)
        for piece in pieces:
            # escaping is per character, so the pieces' escapes join into the whole's
            out.write(json.dumps(piece, ensure_ascii=False)[1:-1].encode(*enc))
        out.write(b'"')
    out.write(b"}\n")


def _csv_cells(d: dict) -> list:
    """A record's CSV cells (file-kept outputs as :func:`_streamed` left them)."""
    d["args"] = json.dumps(d["args"], ensure_ascii=False)
    d["cpus"] = ",".join(map(str, d["cpus"])) if d["cpus"] else ""
    return ([_csv_cell(d[k]) for k in EXPORT_FIELDS]
            + [d.get("stdout_base64", ""), d.get("stderr_base64", "")])


def _write_csv_streamed(cells: list, text) -> None:
    """One CSV row, as ``csv.writer`` writes it, with file-kept outputs written a chunk at
    a time (quoted, their quotes doubled, when they hold a character that needs it)."""
    one = io.StringIO()
    w = csv.writer(one)
    sep = ""
    for v in cells:
        text.write(sep)
        sep = ","
        if not _is_file(v):
            # a cell as the writer formats it within a row: alone, an empty one is quoted
            one.seek(0)
            one.truncate()
            w.writerow([v, ""])
            text.write(one.getvalue()[:-3])
            continue
        kind, stored, quote = v
        if quote:
            text.write('"')
        for piece in (_text_chunks(stored) if kind == "text" else _base64_chunks(stored)):
            text.write(piece.replace('"', '""') if quote else piece)
        if quote:
            text.write('"')
    text.write("\r\n")


def export(reader: StoreReader, fmt: str, out) -> int:
    """Write every attempt (joblog: every completed task) to the binary stream *out* in
    *fmt* (``jsonl``, ``csv`` or ``joblog``). Returns the number of records. Outputs kept
    in files beside the store are written a chunk at a time: memory stays small whatever
    their size."""
    n = 0
    if fmt == "jsonl":
        for a in reader.attempts(file_outputs=True):
            if isinstance(a["stdout"], StoredOutput) or isinstance(a["stderr"], StoredOutput):
                _write_json_streamed(_streamed(a), out)
            else:
                out.write(json.dumps(_jsonable(a), ensure_ascii=False).encode(
                    "utf-8", "surrogateescape"))
                out.write(b"\n")
            n += 1
    elif fmt == "csv":
        text = io.TextIOWrapper(out, encoding="utf-8", errors="surrogateescape", newline="",
                                write_through=True)
        w = csv.writer(text)
        w.writerow(EXPORT_FIELDS + ("stdout_base64", "stderr_base64"))
        for a in reader.attempts(file_outputs=True):
            if isinstance(a["stdout"], StoredOutput) or isinstance(a["stderr"], StoredOutput):
                _write_csv_streamed(_csv_cells(_streamed(a)), text)
            else:
                w.writerow(_csv_cells(_jsonable(a)))
            n += 1
        text.detach()
    elif fmt == "joblog":
        from .joblog import HEADER, exit_fields, format_row

        out.write(HEADER.encode())
        for seq, start, dur, st, rc, sig, command, host, received in reader.joblog_rows():
            ev, sig = exit_fields(types.SimpleNamespace(status=Status(st), returncode=rc,
                                                        signal=sig))
            # Host: ":" for the machine that ran pardo, as GNU writes it; the rank@host a
            # task ran on with --mpi
            out.write(format_row(seq, start, dur, ev, sig, command, host or ":", received))
            n += 1
    else:
        raise UsageError(f"unknown export format {fmt!r}: jsonl, csv or joblog")
    return n


def _csv_cell(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    return v


def default_store() -> str | None:
    """The store ``pardo status`` reads when none is named: ``$PARDO_STORE``, else
    ``./pardo.db`` if it exists."""
    env = os.environ.get("PARDO_STORE")
    if env:
        return env
    return "pardo.db" if os.path.exists("pardo.db") else None
