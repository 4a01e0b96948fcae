"""``--results NAME.csv``, ``.tsv`` or ``.json``: one file with a record per job, in GNU
parallel's format (the joblog's columns, then the input values and the job's output)."""

from __future__ import annotations

import os
import re

from .._store import exit_fields
from .spool import copy_out, size_of

__all__ = ["ResultsFile"]

_COLUMNS = ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal",
            "Command"]


def _json_str(s: str) -> str:
    # GNU writes " and \ with a backslash, control characters as \u000a escapes
    s = s.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f]", lambda m: f"\\u{ord(m.group()):04x}", s) + '"'


class ResultsFile:
    """An open results file; :meth:`write` adds one job's record."""

    def __init__(self, path: str):
        self._kind = path.rsplit(".", 1)[1]
        self._sep = {"csv": ",", "tsv": "\t"}.get(self._kind)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        self._header_done = False
        if self._sep is not None:
            # GNU quotes a field holding white space, a quote or the separator
            self._needs_quote = re.compile(r'[\s"' + re.escape(self._sep) + "]").search

    def _field(self, v: str) -> str:
        if self._needs_quote(v):
            return '"' + v.replace('"', '""') + '"'
        return v

    def add(self, result, command) -> None:
        """The record of a finished job: its Result (with the batch's ``seq`` and
        ``inputs``; its output spooled or held) and the command line it ran."""
        ev, sig = exit_fields(result)
        out, err = bytearray(), bytearray()
        copy_out(result, 1, out.extend)
        copy_out(result, 2, err.extend)
        self.write(result.seq, result.started_at, result.duration, size_of(result, 1), ev,
                   sig, command, result.inputs, bytes(out), bytes(err))

    def write(self, seq, started_at, runtime, receive, exitval, signal, command, values,
              stdout: bytes, stderr: bytes) -> None:
        out = stdout.decode("utf-8", "surrogateescape")
        err = stderr.decode("utf-8", "surrogateescape")
        if self._kind == "json":
            vals = ", ".join(_json_str(v) for v in values)
            line = (f'{{ "Seq": {seq:d}, "Host": ":", "Starttime": {started_at:.3f}, '
                    f'"JobRuntime": {runtime:.3f}, "Send": 0, "Receive": {receive:d}, '
                    f'"Exitval": {exitval:d}, "Signal": {signal:d}, '
                    f'"Command": {_json_str(command)}, "V": [ {vals} ], '
                    f'"Stdout": {_json_str(out)}, "Stderr": {_json_str(err)} }}\n')
        else:
            rows = []
            if not self._header_done:
                names = _COLUMNS + [f"V{i}" for i in range(1, len(values) + 1)]
                rows.append(self._sep.join(names + ["Stdout", "Stderr"]) + "\n")
                self._header_done = True
            fields = [str(seq), ":", f"{started_at:.3f}", f"{runtime:.3f}", "0", str(receive),
                      str(exitval), str(signal), command, *values, out, err]
            rows.append(self._sep.join(self._field(f) for f in fields) + "\n")
            line = "".join(rows)
        data = line.encode("utf-8", "surrogateescape")
        while data:
            data = data[os.write(self._fd, data):]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
