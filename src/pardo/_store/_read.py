"""Reading a job store: what ``pardo status``, ``show``, ``export`` and ``report`` show, and
what a resume needs to know (which tasks are done, and whether the run is the same one).

Every query reads the completion records (``final = 1``) unless it says otherwise, so a
task retried three times counts once, with its last attempt. Readers open the store
read-only and work while a run writes it (WAL readers see the last committed state).
"""

from __future__ import annotations

import bisect
import json
import os
import zlib
from array import array
from dataclasses import dataclass

from .._errors import StoreMismatch
from ._db import WriterLock, connect_reader, out_dir

__all__ = ["ATTEMPT_FIELDS", "OUTPUT_CHUNK", "ResumeState", "StoreMismatch", "StoreReader",
           "StoredOutput"]

# Bytes read at a time from an output kept in a file: what a reader streaming it (show,
# export) holds of it at once, whatever the file's size.
OUTPUT_CHUNK = 1 << 20

# The fields of one attempt as readers give them (export's JSON keys, in this order).
ATTEMPT_FIELDS = ("seq", "args", "command", "attempt", "final", "status", "returncode",
                  "signal", "slot", "cpus", "host", "started_at", "duration", "deadline",
                  "late", "cpu_user", "cpu_sys", "max_rss", "error", "stdout", "stderr",
                  "output_truncated", "run")

_SELECT = ("SELECT a.seq, a.args, a.command, a.attempt, a.final, a.status, a.returncode,"
           " a.signal, a.slot, a.cpus, coalesce(a.host, r.host), a.started_at, a.duration,"
           " a.deadline, a.late, a.cpu_user, a.cpu_sys, a.max_rss, a.error, a.stdout,"
           " a.stderr, a.truncated, a.run, a.stdout_file, a.stderr_file"
           " FROM attempts a JOIN runs r ON r.id = a.run")


class StoredOutput:
    """An output stream kept in a file beside the store (one bigger than the inline
    limit), read a chunk at a time rather than into memory.

    Attributes:
        path: the file.
        size: its size in bytes.
    """

    __slots__ = ("path", "size")

    def __init__(self, path: str):
        self.path = path
        self.size = os.stat(path).st_size

    def __len__(self) -> int:
        return self.size

    def chunks(self, size: int | None = None):
        """The file's bytes, *size* (default :data:`OUTPUT_CHUNK`) at a time; the last
        chunk may be shorter."""
        size = size or OUTPUT_CHUNK
        with open(self.path, "rb", buffering=0) as f:
            while True:
                data = f.read(size)
                if not data:
                    return
                yield data

    def read(self) -> bytes:
        """The whole stream, in memory."""
        with open(self.path, "rb") as f:
            return f.read()


class StoreReader:
    """A store opened for reading.

    Args:
        path: the store file.
    """

    def __init__(self, path: str):
        self.path = path
        self._con = connect_reader(path)
        self._out = out_dir(path)

    def close(self) -> None:
        self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- runs -----------------------------------------------------------------------------

    def runs(self) -> list[dict]:
        """Every run that wrote to the store, oldest first."""
        cur = self._con.execute("SELECT id, started_at, ended_at, ended, template, options,"
                                " inputs, host, pid, version, rung, journal FROM runs ORDER BY id")
        keys = [d[0] for d in cur.description]
        out = []
        for row in cur:
            d = dict(zip(keys, row))
            d["options"] = json.loads(d["options"] or "{}")
            d["inputs"] = json.loads(d["inputs"] or "null")
            out.append(d)
        return out

    def writer_active(self) -> bool:
        """Whether a run is writing the store right now."""
        return WriterLock.held(self.path)

    # -- attempts -------------------------------------------------------------------------

    def _row_dict(self, row, with_output=True, file_outputs=False):
        d = dict(zip(ATTEMPT_FIELDS, row[:23]))
        d["args"] = json.loads(d["args"]) if d["args"] is not None else None
        d["final"] = bool(d["final"])
        d["output_truncated"] = bool(d["output_truncated"])
        d["cpus"] = [int(c) for c in d["cpus"].split(",")] if d["cpus"] else None
        for key, spilled in (("stdout", row[23]), ("stderr", row[24])):
            if not with_output:
                d.pop(key)
                continue
            if spilled is not None:
                stored = StoredOutput(os.path.join(self._out, spilled))
                d[key] = stored if file_outputs else stored.read()
            else:
                d[key] = d[key] or b""
        return d

    def attempts(self, *, final_only: bool = False, with_output: bool = True,
                 file_outputs: bool = False):
        """Every attempt as a dict (keys: ATTEMPT_FIELDS; stdout/stderr bytes), in seq and
        attempt order.

        Args:
            final_only: only the attempts that completed their task.
            with_output: include stdout and stderr.
            file_outputs: a stream kept in a file beside the store comes as a
                :class:`StoredOutput` to read in chunks, not as bytes (it may be any size).
        """
        sql = _SELECT + (" WHERE a.final = 1" if final_only else "") + " ORDER BY a.seq, a.id"
        for row in self._con.execute(sql):
            yield self._row_dict(row, with_output, file_outputs)

    def joblog_rows(self):
        """(seq, started_at, duration, status, returncode, signal, command, host, stdout
        bytes) of every completed task, by seq: the columns of GNU parallel's joblog.
        *host* is None for this store's own host; the size of a stdout kept in a file is
        the file's."""
        for row in self._con.execute(
                "SELECT seq, started_at, duration, status, returncode, signal, command, host,"
                " coalesce(length(stdout), 0), stdout_file FROM attempts WHERE final = 1"
                " ORDER BY seq, id"):
            size = row[8]
            if row[9] is not None:
                size = os.stat(os.path.join(self._out, row[9])).st_size
            yield row[:8] + (size,)

    def task(self, seq: int, *, file_outputs: bool = False) -> list[dict]:
        """Every attempt of task *seq*, oldest first (empty if it never completed);
        *file_outputs* as for :meth:`attempts`."""
        rows = self._con.execute(_SELECT + " WHERE a.seq = ? ORDER BY a.id", (seq,)).fetchall()
        return [self._row_dict(r, True, file_outputs) for r in rows]

    # -- summary --------------------------------------------------------------------------

    def summary(self, slowest: int = 5, groups: int = 10) -> dict:
        """What ``pardo status`` shows. Counts come from the tallies the writer keeps, and
        percentiles, the slowest tasks and failure groups from partial indexes, so no
        query scans the table: well under a second at a million tasks. (While the first
        run into a store is under way its duration index is not there yet: the percentiles
        then come from one sorted read of the durations, 0.16 s at 200,000 tasks.)"""
        con = self._con
        counts, n_attempts, first, last = {}, 0, None, None
        for st, tasks, attempts, f, l_ in con.execute("SELECT * FROM tallies"):
            if tasks:
                counts[st] = tasks
            n_attempts += attempts
            first = f if first is None or (f is not None and f < first) else first
            last = l_ if last is None or (l_ is not None and l_ > last) else last
        total = sum(counts.values())

        def nth(sql, n, q):
            if not n:
                return None
            return con.execute(sql, (min(n - 1, int(q * n)),)).fetchone()[0]

        if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'index'"
                       " AND name = 'attempts_duration'").fetchone():
            def duration_at(q):
                return nth("SELECT duration FROM attempts WHERE final = 1 ORDER BY duration"
                           " LIMIT 1 OFFSET ?", total, q)
        else:
            # a new store's first run, under way: the index comes at its end. One sorted
            # read gives both percentiles (an OFFSET query sorts all it skips, each time).
            durations = [d for (d,) in con.execute(
                "SELECT duration FROM attempts WHERE final = 1 ORDER BY duration")]

            def duration_at(q):
                if not total:
                    return None
                i = min(total - 1, int(q * total))
                return durations[i] if i < len(durations) else None
        n_late = con.execute("SELECT count(*) FROM attempts WHERE late IS NOT NULL"
                             ).fetchone()[0]
        by_late = "SELECT late FROM attempts WHERE late IS NOT NULL ORDER BY late LIMIT 1 OFFSET ?"
        slow = con.execute("SELECT seq, duration, status, command FROM attempts WHERE final = 1"
                           " ORDER BY duration DESC LIMIT ?", (slowest,)).fetchall()
        fails = con.execute(
            "SELECT status, returncode, signal, error, count(*), min(seq) FROM attempts"
            " WHERE final = 1 AND status != 'ok'"
            " GROUP BY status, returncode, signal, error ORDER BY count(*) DESC LIMIT ?",
            (groups,)).fetchall()
        failures = []
        for st, rc, sig, err, n, _first in fails:
            seqs = [r[0] for r in con.execute(
                "SELECT seq FROM attempts WHERE final = 1 AND status != 'ok' AND status = ?"
                " AND returncode IS ? AND signal IS ? AND error IS ? ORDER BY seq LIMIT 5",
                (st, rc, sig, err))]
            failures.append({"reason": _reason(st, rc, sig, err), "count": n, "seqs": seqs})
        wall = (last - first) if first is not None and last is not None else 0.0
        return {
            "tasks": total,
            "attempts": n_attempts,
            "counts": counts,
            "duration": {"p50": duration_at(0.5), "p95": duration_at(0.95),
                         "max": slow[0][1] if slow else None},
            "wall": wall,
            "throughput": total / wall if wall > 0 else None,
            "slowest": [{"seq": s, "duration": d, "status": st, "command": c}
                        for s, d, st, c in slow],
            "failures": failures,
            "lateness": {"n": n_late, "p50": nth(by_late, n_late, 0.5),
                         "p99": nth(by_late, n_late, 0.99), "max": nth(by_late, n_late, 1.0)},
        }

    def timeline(self):
        """(seq, slot, started_at, duration, status) of every attempt, for the report."""
        return self._con.execute("SELECT seq, slot, started_at, duration, status, returncode,"
                                 " signal, attempt, command FROM attempts ORDER BY id")

    # -- resume ---------------------------------------------------------------------------

    def failed_tasks(self):
        """(seq, args, command) of every task whose completion was not "ok", by seq: what
        ``--retry-failed`` runs again (the recorded command, as GNU does with its joblog)."""
        for seq, args, command in self._con.execute(
                "SELECT seq, args, command FROM attempts WHERE final = 1 AND status != 'ok'"
                " ORDER BY seq"):
            yield seq, tuple(json.loads(args)) if args is not None else (), command

    def resume_state(self) -> ResumeState:
        """What a resume needs: the completed tasks, their outcome and their inputs."""
        seqs, crcs, failed = array("q"), array("L"), array("q")
        for seq, args, status in self._con.execute(
                "SELECT seq, args, status FROM attempts WHERE final = 1 ORDER BY seq"):
            seqs.append(seq)
            crcs.append(zlib.crc32((args or "").encode("utf-8", "surrogatepass")))
            if status != "ok":
                failed.append(seq)
        # the run a resume continues: the latest one that ran a template (a --retry-failed
        # run re-ran recorded commands, and a --force run started over with its own)
        runs = [r for r in self.runs() if r["options"].get("mode") != "retry-failed"]
        return ResumeState(self.path, seqs, crcs, failed, runs[-1] if runs else None)


def _reason(status, rc, sig, err):
    from .._result import signal_name

    if status == "failed":
        # exit 0 and failed: its output was cut at --max-output (the error says so)
        if err:
            return err if rc == 0 else f"exited {rc}; {err}"
        return f"exited {rc}"
    if status == "timeout":
        return "timed out"
    if status in ("signaled", "crashed") and sig:
        return f"killed by {signal_name(sig)}"
    if status == "error":
        return f"could not start: {err}"
    return status


@dataclass
class ResumeState:
    """The completed tasks of a store, compactly (12 bytes per task).

    Attributes:
        seqs: sorted seqs with a completion record.
        failed: sorted seqs whose completion was not "ok".
        first_run: the run a resume continues (template, options, inputs): the store's
            latest run that was not a ``--retry-failed``, or None.
    """

    path: str
    seqs: array
    crcs: array
    failed: array
    first_run: dict | None

    def completed(self, seq: int) -> bool:
        i = bisect.bisect_left(self.seqs, seq)
        return i < len(self.seqs) and self.seqs[i] == seq

    def is_failed(self, seq: int) -> bool:
        i = bisect.bisect_left(self.failed, seq)
        return i < len(self.failed) and self.failed[i] == seq

    def skip(self, mode: str) -> ResumeState._Skip:
        """The set of seqs a resume leaves out: ``"resume"`` every completed one,
        ``"resume-failed"`` the completed ok ones (failed ones run again)."""
        return ResumeState._Skip(self, mode)

    class _Skip:
        def __init__(self, state, mode):
            self._s, self._failed_too = state, mode == "resume"

        def __contains__(self, seq):
            s = self._s
            return s.completed(seq) and (self._failed_too or not s.is_failed(seq))

    def check_run(self, template: str, inputs=None, *, force: bool = False) -> None:
        """Refuse (StoreMismatch) to resume with another command template or other inputs
        than the store's first run, saying what differs, unless *force*."""
        run = self.first_run
        if run is None or force:
            return
        diffs = []
        if run["template"] != template:
            diffs.append(f"command template was {run['template']!r}, now {template!r}")
        if inputs is not None and run["inputs"] is not None and run["inputs"] != inputs:
            diffs.append(f"inputs were {_sources(run['inputs'])}, now {_sources(inputs)}")
        if diffs:
            raise StoreMismatch(f"cannot resume {self.path}: " + "; ".join(diffs)
                                + " (--force resumes anyway)")

    def check_task(self, seq: int, args, *, force: bool = False) -> None:
        """Refuse to skip task *seq* when its input values differ from the recorded ones."""
        if force:
            return
        i = bisect.bisect_left(self.seqs, seq)
        if i >= len(self.seqs) or self.seqs[i] != seq:
            return
        got = zlib.crc32(json.dumps(list(args)).encode("utf-8", "surrogatepass"))
        if got != self.crcs[i]:
            with StoreReader(self.path) as rd:  # rare: fetch what was recorded, to show it
                was = [a["args"] for a in rd.task(seq) if a["final"]]
            raise StoreMismatch(
                f"cannot resume {self.path}: the inputs of task {seq} differ from the ones "
                f"recorded: were {was[0] if was else '?'!r}, now {list(args)!r} "
                "(--force resumes anyway)")


def _sources(identity):
    """The inputs' identity as a person reads it: ``::: a b c ... z (26 values)``."""
    if not isinstance(identity, list):
        return _short(identity)
    parts = []
    for src in identity:
        if not isinstance(src, dict):
            parts.append(_short(src))
        elif "file" in src:
            parts.append(("::::+ " if src.get("linked") else ":::: ") + src["file"])
        else:
            vals = " ".join(src.get("first") or [])
            if src.get("values", 0) > 4:
                vals += " ..."
            if src.get("values", 0) > 3 and src.get("last") is not None:
                vals += " " + src["last"]
            parts.append(f"{':::+' if src.get('linked') else ':::'} {vals} "
                         f"({src.get('values')} values, sha256 {src.get('sha256')})")
    return " ".join(parts) or "(none)"


def _short(v, width=120):
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= width else s[: width - 3] + "..."
