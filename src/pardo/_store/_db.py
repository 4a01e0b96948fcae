"""Opening a job store: the SQLite schema, the checks made before any work starts, the
journal mode chosen from the filesystem, and the one-writer lock.

A store is one SQLite file (``runs.db``) plus, beside it, ``runs.db.lock`` (the writer's
lock and who holds it) and ``runs.db.out/`` (task output too large to keep inline). Tables:

- ``meta``: what this file is (``format = pardo-store``) and its schema version.
- ``runs``: one row per ``pardo run`` (or resume) that wrote to the store: command template,
  options, inputs' identity, host, pid, pardo version, isolation rung, start, end and how it
  ended (NULL end: the run was killed, or is still going).
- ``tallies``: per status, the number of completed tasks and of attempts, the first start
  and the last end, kept by the writer in the same transactions as the rows, so that
  ``pardo status`` need not count a million rows. Partial indexes on duration (completed
  tasks), on failures and on deadline lateness serve its percentiles, slowest tasks and
  failure groups without a scan (the one on duration is built when a new store's first
  run ends: see DURATION_INDEX).
- ``attempts``: one row per finished task attempt. ``final = 1`` marks the attempt that
  completed its task (the last one, after retries); a partial unique index allows at most
  one such row per seq. A row is only ever written after its attempt ended, in one
  transaction, so a task that was running when pardo died has no completion record and
  runs again on resume, while a committed one is never lost.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import time

from .._errors import StoreError

__all__ = [
    "NETWORK_FS",
    "SCHEMA_VERSION",
    "StoreError",
    "WriterLock",
    "connect_reader",
    "create_or_open",
    "fs_magic",
    "journal_mode_for",
    "out_dir",
]

SCHEMA_VERSION = 1
FORMAT = "pardo-store"


# statfs(2) f_type of filesystems on which SQLite's WAL must not be used: WAL keeps its
# index in shared memory (the -shm file, mmap'd), which processes on different hosts cannot
# share, and these filesystems' locks and mmap coherence are not what SQLite needs.
NETWORK_FS = {
    0x6969: "NFS",
    0x517B: "SMB",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
    0x19830326: "BeeGFS",
    0x00C36400: "CephFS",
    0x5346414F: "AFS",
    0xAAD7AAEA: "PanFS",
    0x01021997: "9p",
    0x7461636F: "OCFS2",
    0x01161970: "GFS2",
}


_statfs = None  # (libc's statfs, its struct), made on first use: ctypes is imported then


def fs_magic(path: str) -> int:
    """The statfs(2) ``f_type`` of the filesystem holding *path* (tests replace this)."""
    global _statfs
    import ctypes

    if _statfs is None:
        class Statfs(ctypes.Structure):
            # struct statfs begins with f_type (__fsword_t, a C long on every Linux ABI we
            # build for); the rest is room for the fields we do not read.
            _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]

        # the symbols already in this process (libc's among them): find_library("c")
        # would run ldconfig in a subprocess
        _statfs = ctypes.CDLL(None, use_errno=True).statfs, Statfs
    call, struct = _statfs
    buf = struct()
    if call(os.fsencode(path), ctypes.byref(buf)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return buf.f_type & 0xFFFFFFFF


def journal_mode_for(directory: str, policy: str | None = None) -> tuple[str, str | None]:
    """The journal mode for a store in *directory*: ("wal", None) on a local filesystem;
    ("delete", fs name) on a network filesystem, or StoreError there if *policy* is
    ``"refuse"``."""
    if policy is None:
        policy = os.environ.get("PARDO_STORE_NETWORK", "journal")
    name = NETWORK_FS.get(fs_magic(directory))
    if name is None:
        return "wal", None
    if policy == "refuse":
        raise StoreError(
            f"the store's directory {directory} is on {name}, a network filesystem, where "
            "SQLite's WAL mode can corrupt a database; put the store on a local disk "
            "(e.g. /tmp or $TMPDIR), or unset PARDO_STORE_NETWORK=refuse to use a slower "
            "rollback journal there")
    return "delete", name


def out_dir(path: str) -> str:
    """Where outputs larger than the inline limit are kept: beside the store."""
    return path + ".out"


def _one_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _check_meta(con: sqlite3.Connection, path: str) -> None:
    """Raise StoreError unless *con* is a pardo store this pardo can read."""
    try:
        rows = dict(con.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        msg = _one_line(e)
        if "no such table" in msg or "not a database" in msg:
            raise StoreError(f"{path} is not a pardo store (it is {_what_is(con, msg)}); "
                             "give a new file name or an existing store") from None
        raise StoreError(f"cannot read store {path}: {msg}") from None
    if rows.get("format") != FORMAT:
        raise StoreError(f"{path} is not a pardo store (an SQLite database without pardo's "
                         "meta table); give a new file name or an existing store")
    version = int(rows.get("schema", "0"))
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer pardo ({rows.get('written_by', '?')}, store schema "
            f"{version}; this pardo reads schema {SCHEMA_VERSION} at most); upgrade pardo "
            "to read or extend it")


def _what_is(con, msg):
    if "not a database" in msg:
        return "not an SQLite database"
    return "an SQLite database of something else"


def connect_reader(path: str) -> sqlite3.Connection:
    """Open an existing store read-only (works while a run writes it: WAL readers do not
    block the writer). Raises StoreError with a one-line reason."""
    if not os.path.exists(path):
        raise StoreError(f"no store at {path}")
    con = None
    try:
        con = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True,
                              check_same_thread=False)
        con.execute("PRAGMA busy_timeout = 5000")
        _check_meta(con, path)
    except StoreError:
        con.close()  # a refused file's descriptor is not kept alive by the traceback
        if not _read_only_location(path):
            raise
        # A WAL store on read-only media: SQLite cannot create the -shm index there. No
        # one can be writing it, so it may be read as an immutable file.
        con = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro&immutable=1", uri=True,
                              check_same_thread=False)
        try:
            _check_meta(con, path)
        except StoreError:
            con.close()
            raise
    except sqlite3.Error as e:
        if con is not None:
            con.close()
        raise StoreError(f"cannot open store {path}: {_one_line(e)}") from None
    return con


def _read_only_location(path):
    directory = os.path.dirname(os.path.abspath(path))
    return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


# The index `pardo status` reads percentiles and the slowest tasks from. Its keys come in
# random order, so each commit of a run touched most of its leaf pages (a WAL frame each:
# 46 frames of a commit's 55 at 20,000 tasks of `true`, a third of the writer's time): a
# run into a store that holds no task builds it at its end instead (StoreSink), in one
# sort. A store left without it (pardo killed) gets it when next opened for writing.
DURATION_INDEX = ("CREATE INDEX IF NOT EXISTS attempts_duration ON attempts (duration)"
                  " WHERE final = 1")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    ended TEXT,
    template TEXT,
    options TEXT,
    inputs TEXT,
    host TEXT,
    pid INTEGER,
    version TEXT,
    rung TEXT,
    journal TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    run INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    final INTEGER NOT NULL,
    args TEXT,
    command TEXT,
    status TEXT NOT NULL,
    returncode INTEGER,
    signal INTEGER,
    slot INTEGER,
    cpus TEXT,
    host TEXT,
    started_at REAL,
    duration REAL,
    deadline REAL,
    late REAL,
    cpu_user REAL,
    cpu_sys REAL,
    max_rss INTEGER,
    error TEXT,
    stdout BLOB,
    stderr BLOB,
    stdout_file TEXT,
    stderr_file TEXT,
    truncated INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS attempts_done ON attempts (seq) WHERE final = 1;
CREATE INDEX IF NOT EXISTS attempts_failed ON attempts (status, returncode, signal, error, seq)
    WHERE final = 1 AND status != 'ok';
CREATE INDEX IF NOT EXISTS attempts_late ON attempts (late) WHERE late IS NOT NULL;
CREATE TABLE IF NOT EXISTS tallies (
    status TEXT PRIMARY KEY,
    tasks INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    first_start REAL,
    last_end REAL
) WITHOUT ROWID;
"""


def create_or_open(path: str, *, network: str | None = None) -> tuple[sqlite3.Connection, str]:
    """Open (creating if needed) a store for writing; return (connection, journal mode).

    Every check that can fail is made here, before any task starts: a read-only location,
    a file that is not a store, a store from a newer pardo, a full disk (the schema and
    meta rows are written in a transaction now).
    """
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise StoreError(f"cannot create store {path}: directory {directory} does not exist")
    mode, fs = journal_mode_for(directory, network)
    existed = os.path.exists(path) and os.path.getsize(path) > 0
    if not os.access(directory, os.W_OK) or (existed and not os.access(path, os.W_OK)):
        raise StoreError(f"cannot write store {path}: {'it' if existed else directory} is "
                         "not writable by this user; choose another location")
    try:
        # (the writer's statement cache holds an INSERT per number of rows it takes: see
        # _writer._insert_many)
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                              cached_statements=256)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open store {path}: {_one_line(e)}") from None
    try:
        if existed:
            _check_meta(con, path)
        con.execute("PRAGMA busy_timeout = 10000")
        if not existed:
            # Turning a new, empty file into a WAL database writes its header in a
            # rollback-journal transaction, fsync'd twice by default (4-12 ms here, most
            # of a store's start-up): nothing is in the file to protect yet, and the
            # first checkpoint syncs the header with everything else.
            con.execute("PRAGMA synchronous = OFF")
        got = con.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0]
        # WAL + NORMAL: a commit is in the WAL before the writer goes on, so it survives
        # pardo's death (SIGKILL); the WAL is fsync'd at checkpoints. FULL in rollback
        # mode, where NORMAL would risk the database itself on a crash.
        con.execute("PRAGMA synchronous = " + ("NORMAL" if got == "wal" else "FULL"))
        # room for the index pages a million rows touch (the default is 2 MiB): inserts
        # into the seq and duration indexes then stay in memory between commits
        con.execute("PRAGMA cache_size = -65536")
        con.execute("BEGIN IMMEDIATE")
        # one statement at a time: executescript() would COMMIT the transaction first
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                con.execute(stmt)
        con.execute(DURATION_INDEX)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        from .. import __version__

        con.execute("INSERT OR IGNORE INTO meta VALUES ('written_by', ?)",
                    (f"pardo {__version__}",))
        con.execute("COMMIT")
    except StoreError:
        con.close()
        raise
    except sqlite3.Error as e:
        con.close()
        raise StoreError(describe_write_error(path, e)) from None
    return con, got + (f" ({fs})" if fs else "")


def describe_write_error(path: str, e: BaseException) -> str:
    """One line for an error met while writing a store."""
    msg = _one_line(e)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "full" in msg:
        return f"cannot write store {path}: the disk is full; free space or choose another location"
    if "readonly" in msg or "read-only" in msg or isinstance(e, OSError) and e.errno == errno.EROFS:
        return f"cannot write store {path}: the location is read-only; choose another location"
    if "not a database" in msg or "malformed" in msg:
        return f"{path} is not a usable pardo store ({msg}); give a new file name"
    return f"cannot write store {path}: {msg}"


class WriterLock:
    """At most one writer per store: an exclusive flock on ``STORE.lock`` held for the
    writer's life, with the holder's pid, host and start time written in it for the
    message that refuses a second writer. The kernel drops the lock when its holder dies,
    however it dies, so a killed run never leaves a stale lock behind."""

    def __init__(self, path: str):
        self.path = path + ".lock"
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise StoreError(describe_write_error(path, e)) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 512, 0).decode("utf-8", "replace").strip()
            os.close(self._fd)
            raise StoreError(f"store {path} is being written by another pardo "
                             f"({holder or 'unknown holder'}); wait for it to end, or use "
                             "another store") from None
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        who = f"pid {os.getpid()} on {os.uname().nodename} since {since}\n".encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, who, 0)
        except OSError as e:
            os.close(self._fd)
            raise StoreError(describe_write_error(path, e)) from None

    def release(self) -> None:
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = -1

    @staticmethod
    def held(path: str) -> bool:
        """Whether a writer holds *path*'s store now (for readers: "running" vs "died")."""
        try:
            fd = os.open(path + ".lock", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
