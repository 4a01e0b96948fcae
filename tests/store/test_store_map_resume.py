"""Resuming a stored run from Python: ``map_commands(..., store=, resume=)`` as
``pardo run --resume``, ``--resume-failed`` and ``--retry-failed`` do, with the same
refusals."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import pardo
from pardo._store import StoreReader

N = 300

# A run of N tasks recording into a store, in a child process that the test kills.
_CHILD = f"""
import sys, pardo
for r in pardo.map_commands("sleep 0.02; echo out-{{}}", range(1, {N} + 1), jobs=4,
                            store=sys.argv[1]):
    pass
"""


def _records(db):
    """seq -> number of completion records, and the stdout of each completion."""
    con = sqlite3.connect(db)
    try:
        counts = dict(con.execute(
            "SELECT seq, count(*) FROM attempts WHERE final = 1 GROUP BY seq"))
        outs = dict(con.execute("SELECT seq, stdout FROM attempts WHERE final = 1"))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    return counts, outs


def _kill_mid_way(db):
    """Start the stored run in a child and SIGKILL it once some tasks are recorded."""
    p = subprocess.Popen([sys.executable, "-c", _CHILD, db], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if os.path.exists(db):
                try:
                    with StoreReader(db) as rd:
                        if rd.summary()["tasks"] >= N // 3:
                            break
                except Exception:  # noqa: BLE001 - not created yet
                    continue
        else:
            pytest.fail("the run recorded nothing in 60 s")
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # pardo and its tasks
        p.wait()


def test_a_killed_run_resumes_from_python_with_one_record_per_task(tmp_path):
    db = str(tmp_path / "s.db")
    _kill_mid_way(db)
    before, _ = _records(db)
    assert 0 < len(before) < N and set(before.values()) == {1}
    with pytest.raises(pardo.StoreError, match="already holds"):
        pardo.map_commands("sleep 0.02; echo out-{}", range(1, N + 1), store=db)
    ran = [r.seq for r in pardo.map_commands("sleep 0.02; echo out-{}", range(1, N + 1),
                                             jobs=4, store=db, resume=True)]
    assert sorted(ran) == [s for s in range(1, N + 1) if s not in before]  # the rest only
    counts, outs = _records(db)
    assert counts == {s: 1 for s in range(1, N + 1)}
    assert outs == {s: b"out-%d\n" % s for s in range(1, N + 1)}
    # everything is done: a second resume runs nothing
    assert list(pardo.map_commands("sleep 0.02; echo out-{}", range(1, N + 1), store=db,
                                   resume=True)) == []


def test_a_resume_of_another_run_is_refused_unless_forced(tmp_path):
    db = str(tmp_path / "s.db")
    assert len(list(pardo.map_commands("echo {}", ["a", "b"], store=db))) == 2
    with pytest.raises(pardo.StoreMismatch,
                       match=r"command template was 'echo \{\}', now 'echo x\{\}'"):
        pardo.map_commands("echo x{}", ["a", "b"], store=db, resume=True)
    with pytest.raises(pardo.StoreMismatch,
                       match=r"the inputs of task 2 differ from the ones recorded: "
                             r"were \['b'\], now \['B'\]"):
        list(pardo.map_commands("echo {}", ["a", "B"], store=db, resume=True))
    # more inputs than before: the new ones run
    assert [r.stdout for r in pardo.map_commands("echo {}", ["a", "b", "c"], store=db,
                                                 resume=True)] == [b"c\n"]
    forced = pardo.map_commands("echo x{}", ["a", "B", "c", "d"], store=db, resume=True,
                                force=True)
    assert [r.stdout for r in forced] == [b"xd\n"]
    with StoreReader(db) as rd:
        runs = rd.runs()
    # the other template was refused before its run began; the other input once the
    # inputs reached it (they are read as tasks start, as from an input file)
    assert [(r["ended"], r["options"].get("mode")) for r in runs] == [
        ("completed", None), ("stopped", "resume"), ("completed", "resume"),
        ("completed", "resume")]


def test_resume_failed_and_retry_failed_from_python(tmp_path):
    db, flag = str(tmp_path / "s.db"), tmp_path / "fixed"
    cmd = f"echo {{}}; [ {{}} != 2 ] || [ -e {flag} ]"
    first = {r.seq: r.status for r in pardo.map_commands(cmd, [1, 2, 3], store=db)}
    assert first == {1: "ok", 2: "failed", 3: "ok"}
    # only the failed one, with its recorded command; inputs are not needed
    again = [(r.seq, r.status) for r in pardo.map_commands(cmd, store=db,
                                                          resume="retry-failed")]
    assert again == [(2, "failed")]
    flag.write_text("")
    again = [(r.seq, r.stdout) for r in pardo.map_commands(cmd, [1, 2, 3, 4], store=db,
                                                          resume="resume-failed")]
    assert sorted(again) == [(2, b"2\n"), (4, b"4\n")]
    with StoreReader(db) as rd:
        assert rd.summary()["counts"] == {"ok": 4}
        assert [a["attempt"] for a in rd.task(2)] == [1, 1, 1]  # three runs, one final
        assert sum(a["final"] for a in rd.task(2)) == 1


def test_resume_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="give store=FILE"):
        pardo.map_commands("echo {}", ["a"], resume=True)
    with pytest.raises(ValueError, match=r"resume='failed': give True \(or 'resume'\), "
                                         r"'resume-failed' or 'retry-failed'"):
        pardo.map_commands("echo {}", ["a"], store=str(tmp_path / "s.db"), resume="failed")
    assert not os.path.exists(tmp_path / "s.db")  # nothing was created
