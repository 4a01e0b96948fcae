"""``pardo run --store`` and ``map_commands(store=)``: the store recording real runs,
resumes from it, and SIGKILL at random moments."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import pardo
from pardo._store import StoreError, StoreReader
from pardo._store.joblog import read_joblog

PARDO = [sys.executable, "-m", "pardo"]


def run(*args, timeout=120, **kw):
    return subprocess.run(PARDO + ["run", *args], capture_output=True, timeout=timeout,
                          check=False, **kw)


def finals(path):
    with StoreReader(path) as rd:
        return {a["seq"]: a for a in rd.attempts(final_only=True)}


def test_every_task_and_attempt_is_recorded(tmp_path):
    db, log = str(tmp_path / "s.db"), str(tmp_path / "log.tsv")
    p = run("--store", db, "--joblog", log, "--retries", "3", "-j", "2",
            "echo {}; [ {} != b ]", ":::", "a", "b", "c")
    assert p.returncode == 1, p.stderr
    with StoreReader(db) as rd:
        attempts = [(a["seq"], a["attempt"], a["final"], a["status"]) for a in rd.attempts()]
        run0 = rd.runs()[0]
        b = rd.task(2)
    assert attempts == [(1, 1, True, "ok"), (2, 1, False, "failed"), (2, 2, False, "failed"),
                        (2, 3, True, "failed"), (3, 1, True, "ok")]
    assert [a["stdout"] for a in b] == [b"b\n"] * 3 and b[-1]["command"] == "echo b; [ b != b ]"
    assert all(a["slot"] in (1, 2) for a in b)
    assert run0["template"] == "echo {}; [ {} != b ]" and run0["ended"] == "completed"
    assert run0["options"] == {"jobs": "2", "retries": "3"}
    assert run0["rung"] == pardo.isolation()
    assert set(read_joblog(log)) == {1, 2, 3}  # --joblog still written alongside


def test_resume_runs_exactly_the_rest_and_refuses_another_run(tmp_path):
    db = str(tmp_path / "s.db")
    assert run("--store", db, "echo {}", ":::", "1", "2").returncode == 0
    p = run("--store", db, "echo {}", ":::", "1", "2")
    assert p.returncode == 255
    assert b"already holds 2 completed tasks; --resume" in p.stderr
    p = run("--store", db, "--resume", "echo x{}", ":::", "1", "2")
    assert p.returncode == 255 and p.stderr.decode().strip() == (
        f"pardo run: cannot resume {db}: command template was 'echo {{}}', now 'echo x{{}}' "
        "(--force resumes anyway)")
    p = run("--store", db, "--resume", "-k", "echo {}", "::::", "-", input=b"1\n2\n3\n4\n")
    assert p.returncode == 255 and b"inputs were" in p.stderr  # ::: before, a file now
    p = run("--store", db, "--resume", "--force", "-k", "echo {}", ":::", "1", "2")
    assert p.returncode == 0 and p.stdout == b""  # nothing left to run


def test_resume_with_a_grown_input_file_checks_each_task(tmp_path):
    db, inp = str(tmp_path / "s.db"), tmp_path / "in.txt"
    inp.write_text("a\nb\n")
    assert run("--store", db, "echo {}", "::::", str(inp)).returncode == 0
    inp.write_text("a\nb\nc\n")  # appended: the run goes on with c
    p = run("--store", db, "--resume", "echo {}", "::::", str(inp))
    assert p.returncode == 0 and p.stdout == b"c\n"
    inp.write_text("a\nX\nc\nd\n")  # task 2's input changed: refused, showing both
    p = run("--store", db, "--resume", "echo {}", "::::", str(inp))
    assert p.returncode == 255
    assert b"the inputs of task 2 differ from the ones recorded: were ['b'], now ['X']" in p.stderr


def test_resume_failed_and_retry_failed(tmp_path):
    db = str(tmp_path / "s.db")
    flag = tmp_path / "fixed"
    cmd = f"[ {{}} != 2 ] || [ -e {flag} ]; echo {{}}"
    assert run("--store", db, "-k", cmd, ":::", "1", "2", "3").returncode == 0  # echo wins
    cmd = f"echo {{}}; [ {{}} != 2 ] || [ -e {flag} ]"
    assert run("--store", db, "-k", "--force", cmd, ":::", "1", "2", "3").returncode == 1
    assert {s: a["status"] for s, a in finals(db).items()} == {1: "ok", 2: "failed", 3: "ok"}
    p = run("--store", db, "--retry-failed")
    assert p.returncode == 1 and p.stdout == b"2\n"  # only the failed one, recorded command
    flag.write_text("")
    p = run("--store", db, "--resume-failed", "-k", cmd, ":::", "1", "2", "3", "4")
    assert p.returncode == 255  # other inputs (4 more) : refused
    p = run("--store", db, "--resume-failed", "-k", cmd, ":::", "1", "2", "3")
    assert p.returncode == 0 and p.stdout == b"2\n"
    f = finals(db)
    assert {s: a["status"] for s, a in f.items()} == {1: "ok", 2: "ok", 3: "ok"}
    with StoreReader(db) as rd:
        assert rd.summary()["counts"] == {"ok": 3}


def test_map_commands_records_into_a_store(tmp_path):
    db = str(tmp_path / "s.db")
    out = sorted(r.stdout for r in pardo.map_commands("echo {}", ["x", "y"], store=db))
    assert out == [b"x\n", b"y\n"]
    f = finals(db)
    assert {a["stdout"] for a in f.values()} == {b"x\n", b"y\n"}
    with StoreReader(db) as rd:
        assert rd.runs()[0]["ended"] == "completed"
    with pytest.raises(StoreError, match="already holds 2 completed tasks"):
        pardo.map_commands("echo {}", ["x"], store=db)


def test_an_option_refused_after_the_store_opened_ends_its_run(tmp_path):
    # The store opens before the batch checks its options: a refused option must end the
    # store's run there and then (its writer thread, connection and lock released), not
    # leave it open as a run that "died".
    db = str(tmp_path / "s.db")
    with pytest.raises(ValueError, match="-j/--jobs"):  # a UsageError
        pardo.map_commands("echo {}", ["x"], store=db, jobs="many")
    p = run("--store", db, "-j", "many", "echo", ":::", "1")
    assert p.returncode == 255 and p.stderr.decode().count("\n") == 1, p.stderr
    with StoreReader(db) as rd:
        ended = [r["ended"] for r in rd.runs()]
        assert not rd.writer_active()
    assert len(ended) == 2 and all(e.startswith("stopped: -j/--jobs: 'many'") for e in ended)
    p = run("--store", db, "echo", ":::", "1")  # the store is free, and holds no task
    assert p.returncode == 0 and p.stdout == b"1\n", p.stderr


def test_dry_run_with_a_store_resume_and_no_joblog_is_one_line(tmp_path):
    db = str(tmp_path / "s.db")
    p = run("--dry-run", "--store", db, "--resume", "echo", ":::", "1")
    assert p.returncode == 255 and p.stderr.decode().count("\n") == 1, p.stderr
    assert "--dry-run does not read a --store" in p.stderr.decode()
    assert not os.path.exists(db)  # a dry run opens no store
    p = run("--dry-run", "--store", db, "echo", ":::", "1")
    assert p.returncode == 0 and p.stdout == b"echo 1\n" and not os.path.exists(db)


def test_a_second_writer_is_refused_before_any_task_starts(tmp_path):
    db = str(tmp_path / "s.db")
    first = subprocess.Popen(PARDO + ["run", "--store", db, "sleep", ":::", "5"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(db + ".lock") or not os.path.getsize(db + ".lock"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        marker = tmp_path / "ran"
        p = run("--store", db, "--resume", f"touch {marker}", ":::", "1")
        assert p.returncode == 255 and not marker.exists()
        assert f"being written by another pardo (pid {first.pid} on" in p.stderr.decode()
    finally:
        first.kill()
        first.wait()


def test_sigkill_at_random_moments_leaves_exactly_one_record_per_task(tmp_path):
    # Dozens of SIGKILLs at random moments (some near the end, during the last commits),
    # each followed by --resume, until a run completes: every task then has exactly one
    # completion record with its own output, and the file is intact throughout.
    db = str(tmp_path / "s.db")
    n = 1000  # about 22 s of work at -j 2: more than 30 kills at up to 1 s each let done
    values = [str(i) for i in range(1, n + 1)]
    args = ["--store", db, "--resume", "-j", "2",
            "echo out-{}; sleep 0.0$(({} % 10))", ":::", *values]
    rnd = random.Random(11)
    kills = 0
    t_end = time.monotonic() + 240
    while True:
        assert time.monotonic() < t_end, f"no complete run after {kills} kills"
        p = subprocess.Popen(PARDO + ["run", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        # pardo takes ~0.3 s to start: the earliest kills hit it starting, most mid-run
        delay = rnd.uniform(0.2, 1.0) if kills < 30 else None
        try:
            p.wait(timeout=delay if delay is not None else 120)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            con = sqlite3.connect(db)
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert con.execute("SELECT count(*) - count(DISTINCT seq) FROM attempts"
                               " WHERE final = 1").fetchone()[0] == 0
            con.close()
            continue
        err = p.stderr.read()
        p.stderr.close()
        if p.returncode == 255 and b"being written by another pardo" in err:
            continue  # the killed one's lock is gone once its fd is; rare, retry
        assert p.returncode == 0, err
        break
    assert kills == 30
    f = finals(db)
    assert sorted(f) == list(range(1, n + 1))
    for seq, a in f.items():
        assert a["stdout"] == f"out-{seq}\n".encode() and a["status"] == "ok"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    runs, ended = con.execute("SELECT count(*), count(ended_at) FROM runs").fetchone()
    con.close()
    assert 20 <= runs <= kills + 1 and ended == 1  # most kills hit a run that had started


BIG_CLI = """
import runpy, sys
big = bytearray(b"x") * (300 << 20)  # a caller that holds 300 MiB, every page resident
sys.argv = ["pardo"] + sys.argv[1:]
runpy.run_module("pardo", run_name="__main__")
"""


@pytest.mark.parametrize("rung", ["cgroup", "pgroup", "shepherd"])
def test_stored_max_rss_is_the_tasks_own(tmp_path, rung):
    """A run whose max_rss is kept (--store) starts its tasks so that the figure is theirs,
    whatever the size of the process running pardo (``pardo run`` with nowhere to keep it
    takes the faster start that counts the caller's peak: README, "Measured")."""
    from support import cgroup2_writable

    if rung == "cgroup" and not cgroup2_writable():
        pytest.skip("no writable cgroup2 here (not root, or read-only cgroupfs)")
    db = str(tmp_path / "s.db")
    p = subprocess.run([sys.executable, "-c", BIG_CLI, "run", "--store", db, "true", ":::", "1",
                        "2"], capture_output=True, timeout=120,
                       env=dict(os.environ, PARDO_ISOLATION=rung))
    assert p.returncode == 0, p.stderr
    rss = [a["max_rss"] for a in finals(db).values()]
    assert len(rss) == 2 and all(0 < r < 16 << 20 for r in rss), rss
