"""The store's writer: what a record keeps, how soon it is durable, one completion per task,
and the checks made before work starts."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from storehelp import make_result, small_tmpfs

from pardo._store import StoreError, StoreReader, StoreSink, _db


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "runs.db")


def _open(path, **kw):
    sink = StoreSink(path, **kw)
    sink.run_started(template="echo {}", options={"timeout": 5}, inputs=["a", "b"],
                     rung="cgroup")
    return sink


def test_a_record_keeps_every_field(store_path):
    sink = _open(store_path)
    r = make_result("timeout", None, signal=None, deadline=2.0, duration=2.0125,
                    stdout=b"out", stderr=b"err\xff", output_truncated=True)
    sink.task_done(3, ("x y", "z"), "echo 'x y' z", 2, r, slot=4, cpus=[0, 1],
                   host="node7")
    sink.run_ended("completed")
    with StoreReader(store_path) as rd:
        (a,) = list(rd.attempts())
        run = rd.runs()[0]
    assert a["seq"] == 3 and a["args"] == ["x y", "z"] and a["command"] == "echo 'x y' z"
    assert a["attempt"] == 2 and a["final"] and a["status"] == "timeout"
    assert a["slot"] == 4 and a["cpus"] == [0, 1] and a["host"] == "node7"
    assert a["deadline"] == 2.0 and a["late"] == pytest.approx(0.0125)
    assert a["stdout"] == b"out" and a["stderr"] == b"err\xff" and a["output_truncated"]
    assert (a["cpu_user"], a["cpu_sys"], a["max_rss"]) == (0.001, 0.002, 1 << 20)
    assert run["template"] == "echo {}" and run["options"] == {"timeout": 5}
    assert run["inputs"] == ["a", "b"] and run["rung"] == "cgroup"
    assert run["host"] == socket.gethostname() and run["pid"] == os.getpid()
    assert run["ended"] == "completed" and run["ended_at"] >= run["started_at"]


def test_the_common_row_and_the_full_row_read_the_same(store_path):
    # an "ok" row goes through the short insert; the same with a host does not
    sink = _open(store_path)
    r = make_result(stdout=b"hi\n", deadline=5.0)
    sink.task_done(1, ("a",), "echo a", 1, r, slot=1)
    sink.task_done(2, ("a",), "echo a", 1, r, slot=1, host="elsewhere")
    sink.run_ended("completed")
    with StoreReader(store_path) as rd:
        a, b = list(rd.attempts())
    for k in a:
        if k not in ("seq", "host"):
            assert a[k] == b[k], k
    assert a["host"] == socket.gethostname() and b["host"] == "elsewhere"


def test_output_beyond_64k_goes_to_a_file_beside_the_store(store_path):
    sink = _open(store_path)
    big = os.urandom(200_000)
    sink.task_done(1, ("a",), "cmd", 1, make_result(stdout=big, stderr=b"small"))
    sink.run_ended("completed")
    con = sqlite3.connect(store_path)
    so, so_file, se = con.execute("SELECT stdout, stdout_file, stderr FROM attempts").fetchone()
    con.close()
    assert so is None and se == b"small"
    assert os.path.getsize(os.path.join(store_path + ".out", so_file)) == 200_000
    with StoreReader(store_path) as rd:
        assert rd.task(1)[0]["stdout"] == big


def test_a_completed_task_is_visible_to_another_process_within_the_bound(store_path):
    # The writer commits as soon as something is pending: another connection sees the
    # record well within 0.5 s, without flush() or close().
    sink = _open(store_path)
    try:
        time.sleep(0.2)  # the writer thread is idle, waiting
        t0 = time.monotonic()
        sink.task_done(1, ("a",), "echo a", 1, make_result())
        con = sqlite3.connect(store_path)
        seen = None
        while time.monotonic() - t0 < 2.0:
            if con.execute("SELECT count(*) FROM attempts").fetchone()[0]:
                seen = time.monotonic() - t0
                break
            time.sleep(0.001)
        con.close()
        assert seen is not None and seen < 0.5, seen
    finally:
        sink.run_ended("completed")


def test_records_survive_sigkill_after_the_bound(store_path):
    # A process records 500 tasks, waits the bound (0.5 s), and is killed with SIGKILL,
    # with no close: every record is there and the file is intact.
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.join(os.path.dirname(__file__), os.pardir, "helpers")!r})
        signal.alarm(30)
        from storehelp import make_result
        from pardo._store import StoreSink
        s = StoreSink({store_path!r})
        s.run_started(template="t")
        for i in range(1, 501):
            s.task_done(i, (str(i),), "t", 1, make_result())
        import time; time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
    assert p.returncode == -9
    con = sqlite3.connect(store_path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*), count(DISTINCT seq) FROM attempts WHERE final = 1"
                       ).fetchone() == (500, 500)
    assert con.execute("SELECT ended_at FROM runs").fetchone()[0] is None  # it died
    con.close()
    sink = _open(store_path)  # the lock died with it: the store can be written again
    sink.run_ended("completed")


def test_one_completion_record_per_task(store_path):
    sink = _open(store_path)
    sink.task_done(1, ("a",), "c", 1, make_result("failed", 1), final=False)
    sink.task_done(1, ("a",), "c", 2, make_result("failed", 1), final=False)
    sink.task_done(1, ("a",), "c", 3, make_result())
    sink.flush()
    # the runner re-sending a completion in the same run: the last one wins, once
    sink.task_done(2, ("b",), "c", 1, make_result("failed", 3))
    sink.task_done(2, ("b",), "c", 1, make_result("failed", 4))
    sink.run_ended("completed")
    con = sqlite3.connect(store_path)
    assert con.execute("SELECT seq, attempt, status, returncode FROM attempts WHERE final = 1"
                       " ORDER BY seq").fetchall() == [(1, 3, "ok", 0), (2, 1, "failed", 4)]
    assert con.execute("SELECT count(*) FROM attempts").fetchone()[0] == 5
    with pytest.raises(sqlite3.IntegrityError):  # the schema itself forbids a second one
        con.execute("UPDATE attempts SET final = 1 WHERE seq = 1")
    con.close()


def test_a_superseding_run_replaces_the_completion_record(store_path):
    sink = _open(store_path)
    sink.task_done(1, ("a",), "c", 1, make_result("failed", 2))
    sink.task_done(2, ("b",), "c", 1, make_result())
    sink.run_ended("completed")
    sink = StoreSink(store_path)
    sink.run_started(template="echo {}", supersede=True)
    sink.task_done(1, ("a",), "c", 1, make_result())
    sink.run_ended("completed")
    with StoreReader(store_path) as rd:
        finals = [(a["seq"], a["status"], a["run"]) for a in rd.attempts(final_only=True)]
        assert len(list(rd.attempts())) == 3
    assert finals == [(1, "ok", 2), (2, "ok", 1)]
    with StoreReader(store_path) as rd:  # the tallies took the failed completion back
        s = rd.summary()
    assert s["counts"] == {"ok": 2} and s["tasks"] == 2 and s["attempts"] == 3
    assert s["failures"] == []


def test_a_second_writer_is_refused_with_who_and_since(store_path):
    sink = _open(store_path)
    try:
        code = f"from pardo._store import StoreSink; StoreSink({store_path!r})"
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, check=False)
        assert p.returncode != 0
        msg = p.stderr.strip().splitlines()[-1]
        assert "being written by another pardo" in msg
        assert f"pid {os.getpid()} on {socket.gethostname()} since 20" in msg
        assert " UTC" in msg
    finally:
        sink.run_ended("completed")
    StoreSink(store_path).close()  # free again once the first one ended


def test_readers_see_a_run_while_it_writes(store_path):
    sink = _open(store_path)
    try:
        for i in range(1, 11):
            sink.task_done(i, (str(i),), "c", 1, make_result())
        sink.flush()
        with StoreReader(store_path) as rd:
            assert rd.summary()["tasks"] == 10
            assert rd.writer_active()
    finally:
        sink.run_ended("completed")
    with StoreReader(store_path) as rd:
        assert not rd.writer_active()


@pytest.mark.parametrize("content, says", [
    (b"hello, I am a text file\n" * 10, "is not a pardo store (it is not an SQLite database)"),
    (b"SQLite format 3\x00" + b"\xff" * 200, "is not a pardo store"),
])
def test_a_file_that_is_not_a_store_is_refused(store_path, content, says):
    with open(store_path, "wb") as f:
        f.write(content)
    with pytest.raises(StoreError) as e:
        StoreSink(store_path)
    assert says in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(StoreError, match="is not a pardo store"):
        StoreReader(store_path)
    with open(store_path, "rb") as f:
        assert f.read() == content  # left untouched


def test_an_sqlite_database_of_something_else_is_refused(store_path):
    con = sqlite3.connect(store_path)
    con.execute("CREATE TABLE photos (id)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=r"is not a pardo store \(it is an SQLite database of"):
        StoreSink(store_path)


def test_a_store_from_a_newer_pardo_is_refused(store_path):
    _open(store_path).run_ended("completed")
    con = sqlite3.connect(store_path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    con.commit()
    con.close()
    for opener in (StoreSink, StoreReader):
        with pytest.raises(StoreError, match=r"written by a newer pardo .*schema 99; this "
                                             r"pardo reads schema 1 at most\); upgrade pardo"):
            opener(store_path)


def test_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(StoreError, match="directory .* does not exist"):
        StoreSink(str(tmp_path / "nope" / "runs.db"))


def test_a_read_only_location_is_refused():
    with small_tmpfs("1m") as d:
        path = os.path.join(d, "runs.db")
        _open(path).run_ended("completed")
        subprocess.run(["mount", "-o", "remount,ro", d], check=True)
        with pytest.raises(StoreError, match="read-only|not writable") as e:
            StoreSink(path)
        assert "\n" not in str(e.value)
        with StoreReader(path) as rd:  # still readable
            assert rd.runs()


def test_a_full_disk_is_refused_before_work_starts():
    with small_tmpfs("256k") as d:
        fd = os.open(os.path.join(d, "filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        os.close(fd)
        with pytest.raises(StoreError, match="the disk is full") as e:
            sink = StoreSink(os.path.join(d, "runs.db"))
            sink.run_started(template="t")
        assert "\n" not in str(e.value)


def test_a_disk_filling_mid_run_stops_cleanly_and_keeps_what_was_written():
    with small_tmpfs("2m") as d:
        path = os.path.join(d, "runs.db")
        errors = []
        sink = StoreSink(path, on_error=errors.append)
        sink.run_started(template="t")
        written = 0
        for i in range(1, 200):
            # 60 KiB outputs stay inline: the database itself fills the disk
            sink.task_done(i, (str(i),), "t", 1, make_result(stdout=bytes([i % 256]) * 60_000))
            sink.flush()
            if sink.error is not None:
                break
            written = i
        sink.run_ended("stopped: disk full")
        assert errors and errors[0] is sink.error
        assert "the disk is full" in str(sink.error)
        assert 5 < written < 199
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT seq, stdout FROM attempts ORDER BY seq").fetchall()
        con.close()
        assert [s for s, _ in rows] == list(range(1, written + 1))
        assert all(o == bytes([s % 256]) * 60_000 for s, o in rows)
        # resumable: once there is room, a new run goes on from there
        subprocess.run(["mount", "-o", "remount,size=8m", d], check=True)
        sink = StoreSink(path)
        sink.run_started(template="t")
        with StoreReader(path) as rd:
            state = rd.resume_state()
        assert next(s for s in range(1, 200) if s not in state.skip("resume")) == written + 1
        sink.task_done(written + 1, (str(written + 1),), "t", 1, make_result())
        sink.run_ended("completed")


@pytest.mark.parametrize("magic, name", [(0x6969, "NFS"), (0x0BD00BD0, "Lustre"),
                                         (0x47504653, "GPFS"), (0x19830326, "BeeGFS"),
                                         (0xFF534D42, "CIFS")])
def test_network_filesystems_get_a_rollback_journal_or_a_refusal(store_path, monkeypatch,
                                                                  magic, name):
    monkeypatch.setattr(_db, "fs_magic", lambda path: magic)
    sink = _open(store_path)
    assert sink.journal == f"delete ({name})"
    sink.task_done(1, ("a",), "c", 1, make_result())
    sink.run_ended("completed")
    con = sqlite3.connect(store_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    assert not os.path.exists(store_path + "-wal")
    with StoreReader(store_path) as rd:
        assert rd.runs()[0]["journal"] == f"delete ({name})"
        assert rd.summary()["tasks"] == 1
    monkeypatch.setenv("PARDO_STORE_NETWORK", "refuse")
    with pytest.raises(StoreError, match=f"is on {name}, a network filesystem"):
        StoreSink(store_path)


def test_local_filesystems_use_wal(store_path):
    assert _db.fs_magic(os.path.dirname(store_path)) not in _db.NETWORK_FS
    sink = _open(store_path)
    assert sink.journal == "wal"
    sink.run_ended("completed")
    con = sqlite3.connect(store_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert json.loads(con.execute("SELECT options FROM runs").fetchone()[0]) == {"timeout": 5}
    con.close()


def _indexes(path):
    con = sqlite3.connect(path)
    try:
        return {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                          " AND name LIKE 'attempts_%'")}
    finally:
        con.close()


def test_the_duration_index_of_a_new_store_is_built_when_its_run_ends(store_path):
    # Inserted into row by row, the index of random durations cost each commit a WAL frame
    # for most of its leaf pages: a new store's first run sorts it once, at its end. The
    # readers' figures are the same either way.
    sink = _open(store_path)
    for seq in range(1, 201):
        sink.task_done(seq, (str(seq),), f"echo {seq}", 1,
                       make_result(duration=(seq * 7919 % 200) / 1000))
    assert sink.flush(timeout=10)
    assert "attempts_duration" not in _indexes(store_path)
    with StoreReader(store_path) as rd:
        during = rd.summary()
    sink.run_ended("completed")
    assert "attempts_duration" in _indexes(store_path)
    with StoreReader(store_path) as rd:
        after = rd.summary()
    assert during["duration"] == after["duration"] == {"p50": 0.1, "p95": 0.19, "max": 0.199}
    assert during["slowest"] == after["slowest"]
    assert [s["duration"] for s in after["slowest"]] == [0.199, 0.198, 0.197, 0.196, 0.195]


def test_a_store_that_holds_tasks_keeps_its_duration_index_and_a_killed_run_gets_it_back(
        store_path):
    sink = _open(store_path)
    sink.task_done(1, ("1",), "echo 1", 1, make_result())
    sink.run_ended("completed")
    # a run into a store that holds tasks updates the index as it goes
    sink = StoreSink(store_path)
    sink.run_started(template="echo {}", supersede=True)
    assert "attempts_duration" in _indexes(store_path)
    sink.task_done(2, ("2",), "echo 2", 1, make_result())
    sink.run_ended("completed")
    # pardo killed during a new store's first run leaves it without the index; the next
    # writer to open the store builds it
    other = store_path + "2"
    code = textwrap.dedent(f"""
        import os
        from pardo._store import StoreSink
        sink = StoreSink({other!r})
        sink.run_started(template="t")
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "attempts_duration" not in _indexes(other)
    StoreSink(other).close()
    assert "attempts_duration" in _indexes(other)


def test_quick_and_other_rows_of_one_commit_tally_as_their_rows_say(store_path):
    # The writer takes the common record (ok, exit 0, small output, here) by a shorter way
    # than the others; in one transaction, the tallies still sum exactly what the rows hold.
    sink = StoreSink(store_path, inline_limit=16, max_output=64)
    sink.run_started(template="t {}", supersede=True)
    big = b"x" * 40  # ok, but spilled to a file: not a quick row
    records = [(1, make_result(started_at=10.0, duration=1.0)),
               (2, make_result(started_at=5.0, duration=20.0, stdout=big)),
               (3, make_result("failed", 1, started_at=1.0, duration=0.5)),
               (4, make_result(started_at=12.0, duration=0.25, stderr=b"e")),
               (5, make_result(started_at=11.0, duration=0.5, stdout=b"y" * 80)),  # cut
               (6, make_result(started_at=3.0, duration=1.0))]
    # queued without waking the writer, then woken by the last: one round, one commit
    for seq, r in records:
        sink._pending.append((seq, (str(seq),), f"t {seq}", 1, True, r, 1, None, None, None))
        sink._queued += 1
    commits = sink.commits
    sink.task_done(7, ("7",), "t 7", 1, make_result(started_at=2.0), final=False)
    assert sink.flush(timeout=10) and sink.commits == commits + 1
    sink.run_ended("completed")
    con = sqlite3.connect(store_path)
    try:
        tallies = {t[0]: t[1:] for t in con.execute("SELECT * FROM tallies")}
        rows = con.execute("SELECT status, sum(final), count(*), min(started_at),"
                           " max(started_at + duration) FROM attempts GROUP BY status")
        assert tallies == {st: tuple(rest) for st, *rest in rows}
        assert tallies["ok"] == (4, 5, 2.0, 25.0)
        assert tallies["failed"] == (2, 2, 1.0, 11.5)
        got = con.execute("SELECT seq, args, command, stdout, stderr, stdout_file, truncated"
                          " FROM attempts WHERE seq IN (1, 2, 4, 5) ORDER BY seq").fetchall()
        assert got == [(1, '["1"]', "t 1", None, None, None, None),
                       (2, '["2"]', "t 2", None, None, "1-2-1.stdout", None),
                       (4, '["4"]', "t 4", None, b"e", None, None),
                       (5, '["5"]', "t 5", None, None, "1-5-1.stdout", 1)]
    finally:
        con.close()
