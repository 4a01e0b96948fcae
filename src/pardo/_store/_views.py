"""What the store's readers print: ``pardo status`` (a rich table), ``pardo show`` (one task
in full) and ``pardo export`` (JSON lines, CSV, GNU parallel's joblog)."""

from __future__ import annotations

import base64
import csv
import datetime
import io
import json
import os
import types

from .._errors import UsageError
from .._result import Status, signal_name
from ._read import StoreReader

__all__ = ["EXPORT_FIELDS", "export", "show_text", "status_renderable"]

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
    """``pardo show``: every attempt of task *seq*, with its output; None if unknown."""
    attempts = reader.task(seq)
    if not attempts:
        return None
    out = []
    for a in attempts:
        head = f"task {a['seq']}, attempt {a['attempt']}"
        head += "" if a["final"] else " (an earlier attempt)"
        out.append(head)
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
        out += [f"  {k + ':':<10}{v}" for k, v in rows if v is not None]
        for name in ("stdout", "stderr"):
            data = a[name]
            trunc = " (cut at --max-output)" if a["output_truncated"] else ""
            out.append(f"  --- {name} ({len(data)} bytes){trunc}")
            if data:
                text = data.decode("utf-8", "replace")
                out.append(text if text.endswith("\n") else text + "\n(no newline at end)")
    return "\n".join(out).rstrip("\n") + "\n"


def _jsonable(a: dict) -> dict:
    d = {k: a[k] for k in EXPORT_FIELDS}
    for name in ("stdout", "stderr"):
        try:
            d[name] = a[name].decode("utf-8")
        except UnicodeDecodeError:
            d[name] = None
            d[name + "_base64"] = base64.b64encode(a[name]).decode("ascii")
    return d


def export(reader: StoreReader, fmt: str, out) -> int:
    """Write every attempt (joblog: every completed task) to the binary stream *out* in
    *fmt* (``jsonl``, ``csv`` or ``joblog``). Returns the number of records."""
    n = 0
    if fmt == "jsonl":
        for a in reader.attempts():
            out.write(json.dumps(_jsonable(a), ensure_ascii=False).encode("utf-8",
                                                                          "surrogateescape"))
            out.write(b"\n")
            n += 1
    elif fmt == "csv":
        text = io.TextIOWrapper(out, encoding="utf-8", errors="surrogateescape", newline="",
                                write_through=True)
        w = csv.writer(text)
        w.writerow(EXPORT_FIELDS + ("stdout_base64", "stderr_base64"))
        for a in reader.attempts():
            d = _jsonable(a)
            d["args"] = json.dumps(d["args"], ensure_ascii=False)
            d["cpus"] = ",".join(map(str, d["cpus"])) if d["cpus"] else ""
            w.writerow([_csv_cell(d[k]) for k in EXPORT_FIELDS]
                       + [d.get("stdout_base64", ""), d.get("stderr_base64", "")])
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
