"""``pardo run --mpi --store`` under a real mpiexec: a worker rank SIGKILLed mid-run ends the
job, the store keeps what completed (recorded where it ran), and ``--resume`` runs exactly
the rest from the store."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

from mpi_support import MPIEXEC, PARDO, mpirun, rank_pid, started

from pardo._store import StoreError, StoreReader

N = 120
CMD = "sleep 0.05; echo out{}"
VALUES = [str(i) for i in range(1, N + 1)]


def _finals(db):
    with StoreReader(db) as rd:
        return {a["seq"]: a for a in rd.attempts(final_only=True)}


def _completed(db):
    try:
        with StoreReader(db) as rd:
            return sum(1 for _ in rd.attempts(final_only=True, with_output=False))
    except StoreError:  # not created yet
        return 0


def _intact(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # one completion per task, whatever the kill interrupted
        assert con.execute("SELECT count(*) - count(DISTINCT seq) FROM attempts"
                           " WHERE final = 1").fetchone()[0] == 0
    finally:
        con.close()


def test_a_killed_worker_rank_then_resume_from_the_store_runs_exactly_the_rest(tmp_path):
    db = str(tmp_path / "s.db")
    argv = [MPIEXEC, "-n", "3", PARDO, "run", "--mpi", "--jobs-per-rank", "2", "--store", db,
            CMD, ":::", *VALUES]
    with started(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as p:
        end = time.monotonic() + 30
        while time.monotonic() < end and _completed(db) < 20:
            time.sleep(0.02)
        victim = rank_pid(p.pid, 2)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        p.wait(timeout=30)  # bounded: no hang, ever
        took = time.monotonic() - t0
    assert p.returncode != 0
    assert took < 20
    _intact(db)
    first = _finals(db)
    assert 20 <= len(first) < N  # stopped mid-run
    node = os.uname().nodename
    for seq, a in first.items():
        assert a["status"] == "ok" and a["stdout"] == f"out{seq}\n".encode()
        assert a["host"] in (f"1@{node}", f"2@{node}")  # where it ran, never rank 0

    again = mpirun(3, [PARDO, "run", "--mpi", "--resume", "--store", db, CMD, ":::",
                       *VALUES])
    assert again.returncode == 0, again.stderr
    rest = set(range(1, N + 1)) - set(first)
    assert set(again.stdout.decode().split()) == {f"out{s}" for s in rest}
    _intact(db)
    both = _finals(db)
    assert sorted(both) == list(range(1, N + 1))
    for seq, a in both.items():
        assert a["status"] == "ok" and a["stdout"] == f"out{seq}\n".encode()
    # the first run's records stand; the resumed run recorded exactly the rest, once each
    assert all(both[s]["run"] == first[s]["run"] for s in first)
    with StoreReader(db) as rd:
        runs = rd.runs()
        resumed = runs[-1]["id"]
        seqs = [a["seq"] for a in rd.attempts(with_output=False) if a["run"] == resumed]
    assert len(runs) == 2 and runs[-1]["ended"] == "completed"
    assert sorted(seqs) == sorted(rest)
