"""``pardo report``: a store as one self-contained HTML page.

The page is ``report_page.html`` (markup, style and script, all ours) with the store's data
put into it as one JSON document. Nothing is fetched: a Content-Security-Policy in the
page forbids every request, so even a mistake cannot reach the network. Data is columnar
(one array per field, times in units of 0.1 ms from the first start), which keeps a
100,000-task page near 3 MB and lets the script draw straight from typed arrays.
"""

from __future__ import annotations

import json
import os
from importlib import resources

from ._read import StoreReader

__all__ = ["report_html", "write_report"]

_CMD_BUDGET = 1_500_000  # bytes of command lines to embed at most (failures always kept)
_CMD_WIDTH = 160


def report_html(reader: StoreReader) -> str:
    """The report page of the store open in *reader*."""
    summary = reader.summary(slowest=10, groups=20)
    runs = reader.runs()
    cols = {k: [] for k in ("seq", "slot", "start", "dur", "st", "rc", "sig", "att", "cmd")}
    statuses: list[str] = []
    index: dict[str, int] = {}
    rows = reader.timeline().fetchall()
    t0 = min((r[2] for r in rows if r[2] is not None), default=0.0)
    cmd_bytes = sum(min(len(r[8] or ""), _CMD_WIDTH) for r in rows)
    keep_all = cmd_bytes <= _CMD_BUDGET
    for seq, slot, started, dur, status, rc, sig, attempt, command in rows:
        i = index.get(status)
        if i is None:
            i = index[status] = len(statuses)
            statuses.append(status)
        cols["seq"].append(seq)
        cols["slot"].append(slot or 0)
        cols["start"].append(round(((started or t0) - t0) * 1e4))
        cols["dur"].append(round((dur or 0.0) * 1e4))
        cols["st"].append(i)
        cols["rc"].append(rc)
        cols["sig"].append(sig or 0)
        cols["att"].append(attempt)
        c = command or ""
        if not keep_all and status == "ok":
            c = ""
        cols["cmd"].append(c if len(c) <= _CMD_WIDTH else c[: _CMD_WIDTH - 1] + "\u2026")
    data = {
        "store": os.path.basename(reader.path),
        "t0": t0,
        "runs": [{k: r[k] for k in ("started_at", "ended_at", "ended", "template", "host",
                                    "rung", "version")} for r in runs],
        "statuses": statuses,
        "tasks": cols,
        "commands_kept": "all" if keep_all else "failures",
        "summary": summary,
    }
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    # inside <script>: a "</" could end the element early; U+2028/9 are fine in JSON.parse
    payload = payload.replace("</", "<\\/")
    page = resources.files(__package__).joinpath("report_page.html").read_text("utf-8")
    title = _escape(f"pardo report: {os.path.basename(reader.path)}")
    return page.replace("__TITLE__", title).replace("__DATA__", payload)


def _escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_report(reader: StoreReader, out: str) -> int:
    """Write the report of the store open in *reader* to *out* (atomically, so a browser
    never loads half of it); return its size in bytes."""
    data = report_html(reader).encode("utf-8", "surrogateescape")
    tmp = out + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    return len(data)
