"""Writing a job store: :class:`StoreSink`, the one thing the batch runner calls.

::

    scheduler thread                         writer thread (pardo-store)
    ────────────────                         ───────────────────────────
    sink.task_done(seq, result, ...)  ──►  deque ──► wake ──► (wait out the rest of
      (append + set an Event: never                  _COMMIT_EVERY since the last commit)
       waits for the disk)                           take everything pending
                                                      (up to _MAX_BATCH rows)
                                                                    │
                                                                    ▼
                                            BEGIN; INSERT 64 rows a statement;
                                            (big outputs to files) COMMIT
                                                                    │
    sink.error / on_error(err)  ◄──── a write failed (disk full): stop, keep what is committed

- The writer never waits to fill a batch, and commits at most once per _COMMIT_EVERY
  (50 ms): an idle writer commits a record at once; under load, what arrives during a
  commit or within 50 ms of its start goes into the next one, so a busy run pays for about
  20 commits a second, whatever its task rate. A record is durable (in the WAL, safe from
  pardo's death) once its commit ends, and that commit starts at most 50 ms after
  ``task_done`` returns, or when the commit under way ends if that one takes longer.
- Only completions are written, each in the transaction of its batch: a task that is
  killed with pardo has no row and runs again on resume; a committed row stays.
- Rows are built from the Result in the writer thread, so the scheduler pays only for an
  append to a deque.
- A stream the runner spooled to a file (``pardo run``'s --group) comes as an fd of the
  store's own: up to the inline limit it is read into the row, beyond that the file is
  linked into the output directory (or copied by the kernel, from another filesystem),
  never read into memory.
- A stream longer than ``max_output`` (``pardo run``'s --max-output), or one the engine
  already cut (``Result.output_truncated``), is kept up to the limit only (a spooled file
  is then copied, its first bytes only); the row says so (``truncated``, a note in
  ``error``) and a task that exited 0 is recorded as "failed": its output is not what it
  printed, and ``--resume-failed`` runs it again.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import sqlite3
import threading
import time

from .._result import Status
from ._db import (
    DURATION_INDEX,
    StoreError,
    WriterLock,
    create_or_open,
    describe_write_error,
    out_dir,
)

__all__ = ["INLINE_LIMIT", "StoreSink"]

INLINE_LIMIT = 64 * 1024  # bytes per stream kept in the row; more goes to a file beside it
_MAX_BATCH = 20000  # rows per transaction at most, so one commit stays short
# The shortest time between the starts of two commits. A commit costs the writer 0.1 to
# 0.5 ms of CPU (and the WAL a frame per page it touches), taken from the scheduler on a
# busy machine; fewer and bigger ones cost less per row, while a record waits at most this
# long for its commit to start.
_COMMIT_EVERY = 0.05
# Rows per INSERT statement: one statement of many rows binds and steps once per row as
# well, but crosses from Python into SQLite once per group instead of once per row.
_ROWS_PER_INSERT = 64

_INSERT = ("INSERT INTO attempts (run, seq, attempt, final, args, command, status, returncode,"
           " signal, slot, cpus, host, started_at, duration, deadline, late, cpu_user, cpu_sys,"
           " max_rss, error, stdout, stderr, stdout_file, stderr_file, truncated)"
           " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
_QUICK = ("INSERT INTO attempts (run, final, status, returncode, seq, attempt, args, command,"
          " slot, started_at, duration, deadline, cpu_user, cpu_sys, max_rss, stdout, stderr)"
          " VALUES ({run}, 1, 'ok', 0, ?,?,?,?,?,?,?,?,?,?,?,?,?)")
_QUICK_VALUES = "({run}, 1, 'ok', 0, ?,?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_VALUES = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_SUPERSEDE = "UPDATE attempts SET final = 0 WHERE seq = ? AND final = 1"
_TALLY = ("INSERT INTO tallies VALUES (?,?,?,?,?) ON CONFLICT (status) DO UPDATE SET"
          " tasks = tasks + excluded.tasks, attempts = attempts + excluded.attempts,"
          " first_start = min(coalesce(first_start, excluded.first_start),"
          "                   coalesce(excluded.first_start, first_start)),"
          " last_end = max(coalesce(last_end, excluded.last_end),"
          "                coalesce(excluded.last_end, last_end))")
_CLOSE = object()


_STATUS = {st: st.value for st in Status}


def _umask():
    """This process's umask, read without changing it (os.umask() would, for every
    thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_UMASK = _umask()
_dumps = json.JSONEncoder().encode


def _args_json(inputs):
    """The inputs as a JSON array (the same text ``json.dumps`` makes). One plain value,
    the usual case, is written without the encoder, which costs more than the insert."""
    if inputs is None:
        return None
    if len(inputs) == 1:
        v = inputs[0]
        if (type(v) is str and v.isascii() and v.isprintable() and '"' not in v
                and "\\" not in v):
            return '["' + v + '"]'
    return _dumps(list(inputs))


def _size_text(n):
    """A byte count as --max-output takes it: 512, 64K, 256M, 1.5G."""
    for unit in ("", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:g}{unit}" if not unit else f"{n:.4g}{unit}"
        n /= 1024
    return str(n)


def _close_files(files):
    for f in files or ():
        if f is not None:
            os.close(f[0])


def _copy_range(src, dst, size):
    """Copy *size* bytes from offset 0 of fd *src* to fd *dst* in the kernel (memory: none
    of it in this process)."""
    off = 0
    same_fs = True  # copy_file_range: EXDEV between some filesystems (tmpfs to ext4)
    while off < size:
        n = None
        if same_fs:
            try:
                n = os.copy_file_range(src, dst, min(size - off, 1 << 30), off)
            except OSError:
                same_fs = False
        if n is None:
            n = os.sendfile(dst, src, off, min(size - off, 1 << 30))
        if n == 0:
            raise OSError(f"the output file shrank while the store copied it ({off} of "
                          f"{size} bytes)")
        off += n


def _insert_many(con, one_sql, many, rows):
    """Insert *rows*: groups of rows with *many* = (statement, rows it takes, its text up
    to the rows, one row's values), and the rest in one statement of as many rows.

    Each statement steps once with the GIL released, and taking the GIL back waits for
    the scheduler thread to let go of it: the rest one row a statement (up to 63 steps a
    commit) cost the scheduler more than the writer's own work on them.
    """
    many_sql, k, head, values = many
    n = len(rows)
    full = n - n % k
    chain = itertools.chain.from_iterable
    if full:
        con.executemany(many_sql, [tuple(chain(rows[i:i + k])) for i in range(0, full, k)])
    rest = n - full
    if rest == 1:
        con.execute(one_sql, rows[full])
    elif rest:
        # one text per number of rows: SQLite compiles each once (the connection's
        # statement cache holds them)
        con.execute(head + ",".join([values] * rest), tuple(chain(rows[full:])))


def _many(con, sql, values):
    """(an INSERT of *sql*'s columns with :data:`_ROWS_PER_INSERT` rows of *values*, or
    fewer where SQLite binds fewer parameters in one statement, that number, the
    statement's text up to its rows, and *values*)."""
    # SQLite before 3.32 binds at most 999 parameters a statement (RHEL 8 has 3.26)
    k = con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // values.count("?")
    k = max(1, min(_ROWS_PER_INSERT, k))
    head = sql[:sql.index("VALUES") + 7]
    return head + ",".join([values] * k), k, head, values


def _supersede(con, seqs):
    """Take back the completion records of *seqs* (a run that completes them again)."""
    for (seq,) in seqs:
        old = con.execute("SELECT status FROM attempts WHERE seq = ? AND final = 1",
                          (seq,)).fetchone()
        if old is not None:
            con.execute(_SUPERSEDE, (seq,))
            con.execute("UPDATE tallies SET tasks = tasks - 1 WHERE status = ?", old)


class StoreSink:
    """An open store being written by this process (the only writer).

    Opening checks everything that can be checked before work starts and raises
    :class:`StoreError` with a one-line message: a second writer, a file that is not a
    store, a store from a newer pardo, a read-only location, a full disk.

    Args:
        path: the store file (created if missing).
        network: on a network filesystem, ``"journal"`` (rollback journal; the default, or
            ``$PARDO_STORE_NETWORK``) or ``"refuse"``.
        on_error: called once, from the writer thread, with a :class:`StoreError` when a
            write fails mid-run (e.g. the disk filled up); the runner should stop then.
        inline_limit: bytes of each output stream kept in the row.
        max_output: bytes of each output stream kept at most (``--max-output``); a task
            whose output was cut is recorded as failed.
    """

    def __init__(self, path: str, *, network: str | None = None, on_error=None,
                 inline_limit: int = INLINE_LIMIT, max_output: int | None = None):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StoreError(f"cannot create store {path}: directory {directory} does not exist")
        self._lock = WriterLock(path)
        try:
            self._con, self.journal = create_or_open(path, network=network)
        except BaseException:
            self._lock.release()
            raise
        self.host = os.uname().nodename  # gethostname(), without importing socket
        self.run_id = None
        self.error: StoreError | None = None
        self._on_error = on_error
        self._inline = inline_limit
        self._limit = max_output
        self._out_dir = out_dir(path)
        self._supersede = False
        self._pending = collections.deque()
        self._wake = threading.Event()
        self._hurry = threading.Event()  # flush() or the end: commit without waiting
        self._idle = threading.Condition()
        self.commits = 0  # transactions committed (the writer's count)
        self._queued = 0  # records handed over, and written (or dropped after an error)
        self._written = 0
        self._thread = None
        self._closed = False
        self._made: list = []  # output files written for the batch being committed
        self._index_at_end = False  # the duration index is built by run_ended()

    # -- the runner's side ----------------------------------------------------------------

    def run_started(self, *, template: str, options: dict | None = None,
                    inputs: object = None, rung: str | None = None,
                    supersede: bool = False) -> int:
        """Record the start of a run (synchronously: a failure here is reported before any
        task starts) and start the writer thread. Returns the run's id.

        Args:
            template: the command template as the user wrote it.
            options: the options that change what a task does (JSON-able).
            inputs: the inputs' identity (JSON-able: sources, file sizes...).
            rung: the isolation rung in force.
            supersede: this run may complete tasks that already have a completion record
                (``--resume-failed``, ``--retry-failed``): the new record replaces it.
        """
        from .. import __version__

        try:
            if self._con.execute("SELECT NOT EXISTS (SELECT 1 FROM attempts)").fetchone()[0]:
                # no task yet: the duration index is built at the end, in one sort (see
                # DURATION_INDEX); readers meanwhile sort what they read
                self._con.execute("DROP INDEX IF EXISTS attempts_duration")
                self._index_at_end = True
            cur = self._con.execute(
                "INSERT INTO runs (started_at, template, options, inputs, host, pid, version,"
                " rung, journal) VALUES (?,?,?,?,?,?,?,?,?)",
                (time.time(), template, json.dumps(options or {}, sort_keys=True),
                 json.dumps(inputs, sort_keys=True), self.host, os.getpid(), __version__,
                 rung, self.journal))
        except sqlite3.Error as e:
            self._abandon()
            raise StoreError(describe_write_error(self.path, e)) from None
        self.run_id = cur.lastrowid
        self._quick_sql = _QUICK.format(run=int(self.run_id))
        self._quick_many = _many(self._con, self._quick_sql,
                                 _QUICK_VALUES.format(run=int(self.run_id)))
        self._insert_many = _many(self._con, _INSERT, _INSERT_VALUES)
        self._supersede = supersede
        self._thread = threading.Thread(target=self._write_loop, name="pardo-store", daemon=True)
        self._thread.start()
        return self.run_id

    def completed_tasks(self) -> int:
        """How many tasks have a completion record (from the tallies: no scan)."""
        return self._con.execute("SELECT coalesce(sum(tasks), 0) FROM tallies").fetchone()[0]

    def task_done(self, seq: int, inputs, command: str, attempt: int, result, *,
                  final: bool = True, slot: int | None = None, cpus=None,
                  host: str | None = None, files=None) -> None:
        """Record one finished attempt; returns at once (the writer thread writes it).

        Args:
            seq: the task's input number (1-based).
            inputs: the task's input values (a tuple of str).
            command: the command line that ran.
            attempt: 1 for the first run of the task, 2 for its first retry...
            result: the attempt's :class:`pardo.Result`.
            final: whether this attempt completes the task (no retry follows).
            slot: the slot it ran in; cpus: the CPUs it was pinned to, if any.
            host: where it ran, if not on this host.
            files: the attempt's output streams as files, ``[(fd, size) or None]`` for
                stdout and stderr, in place of ``result.stdout``/``stderr``; the store
                owns (and closes) the fds. Each is at offset 0 of the file, which holds
                nothing but the stream.
        """
        self.put((seq, inputs, command, attempt, final, result, slot, cpus, host, files))

    def put(self, record) -> None:
        """:meth:`task_done` with its arguments in a tuple, in its parameters' order:
        ``(seq, inputs, command, attempt, final, result, slot, cpus, host, files)``."""
        if self.error is not None or self._closed:
            _close_files(record[9])
            return  # the store stopped taking records; the runner has been told
        self._pending.append(record)
        self._queued += 1
        if not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record handed over so far is committed (or dropped after an
        error). Returns False on timeout."""
        target = self._queued
        self._hurry.set()
        with self._idle:
            return self._idle.wait_for(lambda: self._written >= target, timeout)

    def run_ended(self, how: str) -> None:
        """Write what is pending, record how the run ended, and close the store.

        Args:
            how: "completed", "interrupted", "halted", "failed: ..." -- shown by readers.
        """
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._pending.append(_CLOSE)
            self._hurry.set()
            self._wake.set()
            self._thread.join()
        try:
            if self.run_id is not None and self.error is None:
                self._con.execute("UPDATE runs SET ended_at = ?, ended = ? WHERE id = ?",
                                  (time.time(), how, self.run_id))
        except sqlite3.Error:
            pass  # what is committed is intact; the end time is only informative
        if self._index_at_end:
            try:
                self._con.execute(DURATION_INDEX)
            except sqlite3.Error:
                pass  # readers sort without it; the next writer to open the store builds it
        self._abandon()

    def close(self) -> None:
        """Close without recording an end (a run that never started, or a reader's)."""
        self.run_ended("closed")

    def _abandon(self):
        try:
            # closing the last connection checkpoints the WAL and removes it: between runs
            # the store is one file
            self._con.close()
        finally:
            self._lock.release()

    # -- the writer thread ----------------------------------------------------------------

    def _write_loop(self):
        pending = self._pending
        hurry = self._hurry
        last = float("-inf")  # monotonic time of the last commit's start
        while True:
            self._wake.wait()
            delay = last + _COMMIT_EVERY - time.monotonic()
            if delay > 0:
                hurry.wait(delay)  # what comes meanwhile joins this commit
            hurry.clear()
            self._wake.clear()
            last = time.monotonic()
            closing = False
            # what is pending now, and no more: what arrives during these commits waits
            # for the next round (and wakes it)
            left = len(pending)
            while left and not closing:
                k = min(left, _MAX_BATCH)
                left -= k
                popleft = pending.popleft
                batch = [popleft() for _ in range(k)]
                if _CLOSE in batch:  # (last, but then what came after it is not written)
                    batch = batch[:batch.index(_CLOSE)]
                    closing = True
                if batch:
                    self._write(batch)
            if closing:
                return

    def _write(self, batch):
        if self.error is None:
            self._made = []
            try:
                self._commit(batch)
            except (sqlite3.Error, OSError) as e:
                # the output files of rows that did not commit (a full disk): none of
                # them is named by a row, and a resume writes its own
                for path in self._made:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                self._fail(e)
        for item in batch:
            if item[9] is not None:
                _close_files(item[9])
        with self._idle:
            self._written += len(batch)
            self._idle.notify_all()

    def _fail(self, e):
        try:
            self._con.rollback()
        except sqlite3.Error:
            pass
        self.error = StoreError(describe_write_error(self.path, e))
        if self._on_error is not None:
            try:
                self._on_error(self.error)
            except Exception:  # noqa: BLE001 - the runner's callback must not kill the writer
                pass

    def _commit(self, batch):
        run, inline, host = self.run_id, self._inline, self.host
        rows, quick, finals = [], [], []
        tallies = {}
        limit = self._limit
        # the most a stream of a quick row holds: kept whole (not cut at max_output) and
        # in the row (not spilled to a file)
        small = inline if limit is None else min(inline, limit)
        add_quick = quick.append
        q_starts, q_ends = [], []  # of the quick rows, for their tally
        supersede = self._supersede
        for seq, inputs, command, attempt, final, r, slot, cpus, where, files in batch:
            # The common record first, with the fewest reads of the Result: a completion
            # that exited 0, here, with nothing to cut, spill or note. Its row is _QUICK's
            # (the columns it has fixed are constants there) and its tally is "ok".
            if (final and files is None and cpus is None and (where is None or where == host)
                    and r.status == "ok" and r.returncode == 0 and r.signal is None
                    and r.error is None and not r.output_truncated):
                so, se = r.stdout or None, r.stderr or None
                if (so is None or len(so) <= small) and (se is None or len(se) <= small):
                    args = _args_json(inputs)
                    start, duration = r.started_at, r.duration
                    q_starts.append(start)
                    q_ends.append(start + duration)
                    add_quick((seq, attempt, args, command, slot, start, duration,
                               r.deadline, r.cpu_user, r.cpu_sys, r.max_rss, so, se))
                    if supersede:
                        finals.append((seq,))
                    continue
            so, se = r.stdout or None, r.stderr or None
            so_file = se_file = None
            cut = None
            if files is not None:
                so, so_file, so_cut = self._take_file(run, seq, attempt, "stdout", files[0], so)
                se, se_file, se_cut = self._take_file(run, seq, attempt, "stderr", files[1], se)
                if so_cut or se_cut:
                    cut = [name for name, c in (("stdout", so_cut), ("stderr", se_cut)) if c]
            if limit is not None:
                if so is not None and len(so) > limit:
                    so, cut = so[:limit] or None, (cut or []) + ["stdout"]
                if se is not None and len(se) > limit:
                    se, cut = se[:limit] or None, (cut or []) + ["stderr"]
            args = _args_json(inputs)
            status = _STATUS.get(r.status) or str(r.status)
            error = r.error
            if cut is not None or r.output_truncated:
                # cut here, at the store's limit; or by the engine, at the caller's
                note = (" and ".join(n for n in ("stdout", "stderr") if n in cut)
                        + f" cut at --max-output {_size_text(limit)}" if cut
                        else "output cut at --max-output")
                cut = True
                error = f"{error}; {note}" if error else note
                if status == "ok":
                    status = "failed"  # not what the task printed: not a success
            start, duration = r.started_at, r.duration
            t = tallies.get(status)
            if t is None:
                t = tallies[status] = [status, 0, 0, start, start + duration]
            t[2] += 1
            t[3] = min(t[3], start)
            t[4] = max(t[4], start + duration)
            if final:
                t[1] += 1
                finals.append((seq,))
            if (final and status == "ok" and r.returncode == 0 and r.signal is None
                    and so_file is None and se_file is None
                    and cpus is None and (where is None or where == host) and error is None
                    and (so is None or len(so) <= inline)
                    and (se is None or len(se) <= inline)):
                # the common row (a spooled stream small enough to read back): binding a
                # parameter costs about as much as the rest of the insert, so the columns
                # this row has fixed are constants in _QUICK
                quick.append((seq, attempt, args, command, slot, start, duration,
                              r.deadline, r.cpu_user, r.cpu_sys, r.max_rss, so, se))
                continue
            if so is not None and len(so) > inline:
                so_file, so = self._spill(run, seq, attempt, "stdout", so), None
            if se is not None and len(se) > inline:
                se_file, se = self._spill(run, seq, attempt, "stderr", se), None
            deadline = r.deadline
            late = duration - deadline if status == "timeout" and deadline is not None else None
            rows.append((run, seq, attempt, 1 if final else 0, args, command, status,
                         r.returncode, r.signal, slot,
                         ",".join(map(str, cpus)) if cpus else None,
                         where if where and where != host else None, start, duration,
                         deadline, late, r.cpu_user, r.cpu_sys, r.max_rss, error,
                         so, se, so_file, se_file, 1 if cut is not None else None))
        if q_starts:
            n = len(q_starts)
            first, last = min(q_starts), max(q_ends)
            t = tallies.get("ok")
            if t is None:
                tallies["ok"] = ["ok", n, n, first, last]
            else:
                t[1] += n
                t[2] += n
                t[3] = min(t[3], first)
                t[4] = max(t[4], last)
        tallies = list(tallies.values())
        con = self._con
        quick_sql = self._quick_sql
        con.execute("BEGIN")
        try:
            if self._supersede:
                _supersede(con, finals)
            if quick:
                _insert_many(con, quick_sql, self._quick_many, quick)
            if rows:
                _insert_many(con, _INSERT, self._insert_many, rows)
        except sqlite3.IntegrityError:
            # a seq completed twice in one run (the runner re-sent it): the last one wins,
            # as with a superseding run, rather than losing the whole batch
            con.rollback()
            con.execute("BEGIN")
            for row in quick:
                _supersede(con, [(row[0],)])
                con.execute(quick_sql, row)
            for row in rows:
                if row[3]:
                    _supersede(con, [(row[1],)])
                con.execute(_INSERT, row)
        except BaseException:
            con.rollback()
            raise
        try:
            con.executemany(_TALLY, tallies)
        except BaseException:
            con.rollback()
            raise
        con.execute("COMMIT")
        self.commits += 1

    def _take_file(self, run, seq, attempt, stream, spooled, data):
        """(inline bytes, file name, whether cut at max_output) of a stream that may have
        come as a file."""
        if spooled is None:
            return data, None, False
        fd, size = spooled
        cut = self._limit is not None and size > self._limit
        if cut:
            size = self._limit  # only the first bytes are kept: copied, not linked
        if size <= self._inline:
            return (os.pread(fd, size, 0) if size else None), None, cut
        os.makedirs(self._out_dir, exist_ok=True)
        name = f"{run}-{seq}-{attempt}.{stream}"
        dest = os.path.join(self._out_dir, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)  # left by a run killed before its row committed
        self._made.append(dest)
        if not cut:
            try:
                # An unnamed (O_TMPFILE) file gets its name here: no byte is copied.
                # linkat() must follow the /proc link (os.link does only with a dir fd
                # given); the file gets the mode a file written here would have (it was
                # made 0600).
                os.fchmod(fd, 0o666 & ~_UMASK)
                proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.link(str(fd), dest, src_dir_fd=proc, follow_symlinks=True)
                finally:
                    os.close(proc)
                return None, name, False
            except OSError:
                pass  # another filesystem, or a file that had a name once: copy it
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            _copy_range(fd, out, size)
        finally:
            os.close(out)
        return None, name, cut

    def _spill(self, run, seq, attempt, stream, data):
        """Write one large output stream to a file beside the store; return its name
        relative to the store's output directory. It is written before the row that points
        to it commits, so a row never points to a missing file; pardo killed in between
        leaves a file that no row names (the task runs again and writes its own)."""
        os.makedirs(self._out_dir, exist_ok=True)
        name = f"{run}-{seq}-{attempt}.{stream}"
        self._made.append(os.path.join(self._out_dir, name))
        with open(self._made[-1], "wb") as f:
            f.write(data)
        return name
