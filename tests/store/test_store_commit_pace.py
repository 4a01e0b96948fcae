"""The writer's pace: an idle writer commits a record at once, a busy one at most once per
interval (50 ms), flush() and the end do not wait for it; and rows inserted many to a
statement read back as they were handed over."""

from __future__ import annotations

import sqlite3
import time

import pytest
from storehelp import make_result

from pardo._store import StoreReader, StoreSink, _writer


def _sink(path):
    sink = StoreSink(path)
    sink.run_started(template="t {}")
    return sink


def _count(con):
    return con.execute("SELECT count(*) FROM attempts").fetchone()[0]


def _seen_within(con, n, seconds):
    """Seconds until another connection sees *n* rows, or None after *seconds*."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if _count(con) >= n:
            return time.monotonic() - t0
        time.sleep(0.002)
    return None


def test_a_busy_writer_commits_at_most_once_per_interval(tmp_path):
    # 600 records, one every 2 ms for about 1.2 s: committed one by one (as each came) that
    # was about 600 commits; at most one per 50 ms is 25, whatever the machine's load
    sink = _sink(str(tmp_path / "s.db"))
    t0 = time.monotonic()
    for i in range(1, 601):
        sink.task_done(i, (str(i),), f"t {i}", 1, make_result())
        time.sleep(0.002)
    sink.flush()
    elapsed = time.monotonic() - t0
    commits = sink.commits
    sink.run_ended("completed")
    # one at the start, one per interval after it, one for the flush (and one of slack)
    assert 2 <= commits <= elapsed / _writer._COMMIT_EVERY + 3, (commits, elapsed)
    with StoreReader(str(tmp_path / "s.db")) as rd:
        assert rd.summary()["tasks"] == 600


def test_an_idle_writer_commits_at_once_a_busy_one_waits_out_the_interval(tmp_path,
                                                                         monkeypatch):
    # An interval of 3 s makes the three cases tell apart on any machine: at once (under
    # 1 s), after the interval (not within 1.5 s: the commit before began at most 1 s
    # earlier), and at once again after idling.
    monkeypatch.setattr(_writer, "_COMMIT_EVERY", 3.0)
    path = str(tmp_path / "s.db")
    sink = _sink(path)
    con = sqlite3.connect(path)
    try:
        sink.task_done(1, ("1",), "t 1", 1, make_result())
        first = _seen_within(con, 1, 1.0)
        assert first is not None, "an idle writer waited"
        t0 = time.monotonic()
        sink.task_done(2, ("2",), "t 2", 1, make_result())
        assert _seen_within(con, 2, 1.5) is None  # within the interval: it waits
        seen = _seen_within(con, 2, 3.0)
        assert seen is not None and time.monotonic() - t0 <= 3.0 + 1.0
        time.sleep(3.1)  # idle longer than the interval
        sink.task_done(3, ("3",), "t 3", 1, make_result())
        assert _seen_within(con, 3, 1.0) is not None, "an idle writer waited"
        # flush() commits what is pending without waiting for the interval
        sink.task_done(4, ("4",), "t 4", 1, make_result())
        t0 = time.monotonic()
        assert sink.flush(timeout=1.5)
        assert time.monotonic() - t0 < 1.5 and _count(con) == 4
        # and so does the end of the run
        sink.task_done(5, ("5",), "t 5", 1, make_result())
        t0 = time.monotonic()
        sink.run_ended("completed")
        assert time.monotonic() - t0 < 1.5 and _count(con) == 5
    finally:
        con.close()
        sink.close()


@pytest.mark.parametrize("max_params", [None, 999])
def test_rows_inserted_many_to_a_statement_read_back_as_handed_over(tmp_path, max_params):
    # 1000 rows in one commit, common ("ok", short insert) and full ones interleaved, so
    # that both kinds fill whole statements and leave a rest; 999 parameters is the
    # limit of SQLite before 3.32 (fewer rows fit a statement there)
    path = str(tmp_path / "s.db")
    sink = StoreSink(path)
    if max_params is not None:
        sink._con.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, max_params)
    sink.run_started(template="t {}")
    if max_params is not None:
        assert sink._insert_many[1] == 999 // 25 and sink._quick_many[1] == 64
    want = {}
    # the first record is committed at once; the 1000 handed over within the interval
    # after it go together into the next commit
    sink.task_done(1001, ("x",), "t x", 1, make_result(stdout=b"first"))
    for i in range(1, 1001):
        if i % 3 == 0:
            r = make_result("failed", i % 7 + 1, stdout=f"o{i}".encode(), duration=i / 1000)
        elif i % 5 == 0:
            r = make_result(stderr=f"e{i}".encode(), duration=i / 1000)
        else:
            r = make_result(stdout=f"o{i}".encode(), duration=i / 1000)
        sink.task_done(i, (f"in {i}",), f"t {i}", 1, r, slot=i % 4,
                       host="elsewhere" if i % 5 == 0 else None)
        want[i] = r
    sink.run_ended("completed")
    with StoreReader(path) as rd:
        got = {a["seq"]: a for a in rd.attempts()}
        assert rd.summary()["counts"] == {"ok": 1 + 1000 - 333, "failed": 333}
    assert len(got) == 1001
    for i, r in want.items():
        a = got[i]
        assert a["args"] == [f"in {i}"] and a["command"] == f"t {i}" and a["slot"] == i % 4
        assert a["status"] == r.status and a["returncode"] == r.returncode
        assert a["stdout"] == (r.stdout or b"") and a["stderr"] == (r.stderr or b"")
        assert a["duration"] == r.duration and a["final"]
        assert (a["host"] == "elsewhere") == (i % 5 == 0)
