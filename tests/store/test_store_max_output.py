"""A task whose output was cut at --max-output is recorded as what it is: failed (its
output is not what it printed), ``truncated`` set, a note in its error, only the first
bytes kept; ``--resume-failed`` runs it again."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from storehelp import make_result

from pardo._store import StoreReader, StoreSink

PARDO = [sys.executable, "-m", "pardo"]
LIMIT = 100 * 1024  # --max-output 100K: more than the 64 KiB kept in a row


def pardo(*args, **kw):
    return subprocess.run(PARDO + list(args), capture_output=True, timeout=120, check=False,
                          **kw)


def _rows(db):
    con = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT seq, status, returncode, truncated, error, length(stdout), length(stderr),"
            " stdout_file, stderr_file FROM attempts WHERE final = 1")}
    finally:
        con.close()


def _xs(n):
    return f"head -c {n} /dev/zero | tr '\\0' x"


# seq: (stdout bytes, stderr bytes, exit status)
TASKS = {
    1: (200_000, 0, 0),  # stdout cut, kept in a file beside the store (copied, not linked)
    2: (10, 0, 0),  # ok
    3: (70_000, 0, 0),  # beyond the row's 64 KiB, within the limit: ok, in a file whole
    4: (LIMIT, 0, 0),  # exactly the limit: not cut
    5: (5, 3 * LIMIT, 0),  # stderr cut
    6: (2 * LIMIT, 2 * LIMIT, 3),  # both cut, and it failed anyway
}


def _cmd(ran):
    # the task's sizes come from its input; each start is logged (to count the reruns)
    return (f"echo {{}} >> {ran}; set -- $(echo {{}} | tr , ' '); "
            f"{_xs('$1')}; {_xs('$2')} >&2; exit $3")


def _inputs():
    return [f"{o},{e},{rc}" for o, e, rc in TASKS.values()]


def test_a_cut_task_is_recorded_failed_and_truncated(tmp_path):
    db, ran = str(tmp_path / "s.db"), tmp_path / "ran.log"
    p = pardo("run", "--store", db, "--max-output", "100K", "-k", _cmd(ran), ":::", *_inputs())
    # 1, 5 cut, 6 failed: three failures, as the exit status says
    assert p.returncode == 3, p.stderr
    rows = _rows(db)
    st = {seq: r[0] for seq, r in rows.items()}
    assert st == {1: "failed", 2: "ok", 3: "ok", 4: "ok", 5: "failed", 6: "failed"}
    assert {seq for seq, r in rows.items() if r[2]} == {1, 5, 6}  # truncated
    assert rows[1][1] == 0 and rows[6][1] == 3  # the exit status as it was
    assert rows[1][3] == "stdout cut at --max-output 100K"
    assert rows[5][3] == "stderr cut at --max-output 100K"
    assert rows[6][3] == "stdout and stderr cut at --max-output 100K"
    assert rows[2][3] is None and rows[4][3] is None
    # only the first LIMIT bytes are kept; what was not cut is kept whole
    out = db + ".out"
    assert os.path.getsize(os.path.join(out, rows[1][6])) == LIMIT
    assert os.path.getsize(os.path.join(out, rows[3][6])) == 70_000
    assert os.path.getsize(os.path.join(out, rows[5][7])) == LIMIT
    assert sorted(os.listdir(out)) == sorted(
        r[i] for r in rows.values() for i in (6, 7) if r[i] is not None)
    with StoreReader(db) as rd:
        a = {x["seq"]: x for x in rd.attempts(final_only=True)}
        s = rd.summary()
    assert a[1]["stdout"] == b"x" * LIMIT and a[5]["stderr"] == b"x" * LIMIT
    assert a[5]["stdout"] == b"x" * 5 and a[4]["stdout"] == b"x" * LIMIT
    assert [a[i]["output_truncated"] for i in sorted(a)] == [True, False, False, False, True,
                                                             True]
    # pardo status groups them by what happened
    reasons = {f["reason"]: f["seqs"] for f in s["failures"]}
    assert reasons == {"stdout cut at --max-output 100K": [1],
                       "stderr cut at --max-output 100K": [5],
                       "exited 3; stdout and stderr cut at --max-output 100K": [6]}
    assert s["counts"] == {"ok": 3, "failed": 3}

    # exported: output_truncated, status and the note
    p = pardo("export", db, "--format", "jsonl")
    assert p.returncode == 0, p.stderr
    recs = {d["seq"]: d for d in map(json.loads, p.stdout.decode().splitlines())}
    assert recs[1]["output_truncated"] is True and recs[1]["status"] == "failed"
    assert recs[1]["error"] == "stdout cut at --max-output 100K"
    assert recs[1]["stdout"] == "x" * LIMIT and recs[2]["output_truncated"] is False
    p = pardo("show", db, "1")
    assert b"--- stdout (102400 bytes) (cut at --max-output)" in p.stdout
    assert b"error:    stdout cut at --max-output 100K" in p.stdout

    # --resume-failed runs the cut ones (and the failed one) again, and only those
    ran.write_text("")
    p = pardo("run", "--store", db, "--resume-failed", "--max-output", "1M", "-k", _cmd(ran),
              ":::", *_inputs())
    assert p.returncode == 1, p.stderr  # 6 exits 3 again
    assert sorted(ran.read_text().split()) == sorted([_inputs()[0], _inputs()[4],
                                                      _inputs()[5]])
    rows = _rows(db)
    assert {seq: r[0] for seq, r in rows.items()} == {
        1: "ok", 2: "ok", 3: "ok", 4: "ok", 5: "ok", 6: "failed"}
    assert not any(r[2] for r in rows.values())
    with StoreReader(db) as rd:
        a = {x["seq"]: x for x in rd.attempts(final_only=True)}
    assert a[1]["stdout"] == b"x" * 200_000 and a[5]["stderr"] == b"x" * 3 * LIMIT


def test_a_small_limit_cuts_inline_output_too(tmp_path):
    db = str(tmp_path / "s.db")
    p = pardo("run", "--store", db, "--max-output", "1K", "-k", _xs("{}"), ":::", "5000", "10")
    assert p.returncode == 1
    assert p.stdout == b"x" * 1024 + b"x" * 10
    rows = _rows(db)
    assert rows[1][:5] == ("failed", 0, 1, "stdout cut at --max-output 1K", 1024)
    assert rows[2][:5] == ("ok", 0, None, None, 10)
    assert not os.path.exists(db + ".out")


def test_results_dir_keeps_the_whole_output_and_so_does_the_store(tmp_path):
    # --results takes the output whole and cuts nothing; the store keeps what it keeps
    db = str(tmp_path / "s.db")
    p = pardo("run", "--store", db, "--results", str(tmp_path / "res"), "--max-output", "1K",
              _xs("{}"), ":::", "5000")
    assert p.returncode == 0, p.stderr
    assert _rows(db)[1][:5] == ("ok", 0, None, None, 5000)


def test_the_writer_records_a_result_the_engine_cut(tmp_path):
    db = str(tmp_path / "s.db")
    sink = StoreSink(db, max_output=8)
    sink.run_started(template="cmd {}")
    # cut by the engine (pardo.run's max_output): the limit is the caller's
    sink.task_done(1, ("a",), "cmd a", 1, make_result(stdout=b"x" * 4, output_truncated=True))
    # longer than the store's limit: cut here
    sink.task_done(2, ("b",), "cmd b", 1, make_result(stdout=b"y" * 20, stderr=b"\xff" * 9))
    # a timeout stays a timeout; its error gets the note
    sink.task_done(3, ("c",), "cmd c", 1,
                   make_result("timeout", None, stdout=b"z" * 9, deadline=1.0, duration=1.1,
                               error="deadline"))
    sink.task_done(4, ("d",), "cmd d", 1, make_result(stdout=b"w" * 8))
    sink.run_ended("completed")
    rows = _rows(db)
    assert rows[1][:4] == ("failed", 0, 1, "output cut at --max-output")
    assert rows[2][:6] == ("failed", 0, 1, "stdout and stderr cut at --max-output 8", 8, 8)
    assert rows[3][:4] == ("timeout", None, 1, "deadline; stdout cut at --max-output 8")
    assert rows[4][:4] == ("ok", 0, None, None)
    with StoreReader(db) as rd:
        a = {x["seq"]: x for x in rd.attempts()}
        assert rd.summary()["counts"] == {"failed": 2, "timeout": 1, "ok": 1}
    assert a[2]["stdout"] == b"y" * 8 and a[2]["stderr"] == b"\xff" * 8
