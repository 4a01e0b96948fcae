"""The store's readers, run as a user runs them: pardo status, show and export."""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
from storehelp import make_result, record_batch

from pardo._store import StoreReader, StoreSink
from pardo._store.joblog import HEADER, read_joblog

PARDO = [sys.executable, "-m", "pardo"]


def pardo(*args, **kw):
    return subprocess.run(PARDO + list(args), capture_output=True, timeout=120, check=False, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real batch: 40 tasks, every 7th exits 3, every 10th times out, one binary output."""
    path = str(tmp_path_factory.mktemp("store") / "runs.db")
    cmd = ("if [ $(({} % 10)) = 9 ]; then sleep 5; fi; "
           "if [ {} = 5 ]; then printf '\\377\\376'; else echo out {}; fi; echo err {} >&2; "
           "exit $(({} % 7 == 0 ? 3 : 0))")
    record_batch(path, cmd, [str(i) for i in range(40)], jobs=4, timeout=0.3, kill_grace=0.1)
    return path


def test_status_counts_durations_failures_and_lateness(store):
    p = pardo("status", "--json", store)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["tasks"] == 40 and s["attempts"] == 40
    # 9, 19, 29, 39 time out; 0, 7, 14, 21, 28, 35 exit 3 (none of them times out)
    assert s["counts"] == {"ok": 30, "failed": 6, "timeout": 4}
    assert s["lateness"]["n"] == 4 and 0 <= s["lateness"]["max"] < 1.0
    assert s["duration"]["max"] >= 0.3
    reasons = {f["reason"]: (f["count"], f["seqs"]) for f in s["failures"]}
    assert reasons["exited 3"] == (6, [1, 8, 15, 22, 29])
    assert reasons["timed out"] == (4, [10, 20, 30, 40])
    assert s["runs"][0]["ended"] == "completed"
    with StoreReader(store) as rd:
        durs = sorted(a["duration"] for a in rd.attempts())
    assert s["duration"]["p50"] == durs[20] and s["duration"]["max"] == durs[-1]


def test_status_table(store):
    p = pardo("status", store, env={**os.environ, "COLUMNS": "120"})
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    for want in ("1 run", "(completed)", "tasks", "ok", "failed", "timeout", "30", "duration",
                 "deadline lateness (4 timeouts)", "slowest", "failures by reason",
                 "exited 3", "#1, #8, #15, #22, #29, ...", "timed out"):
        assert want in out, want


def test_show_one_task_in_full(store):
    p = pardo("show", store, "8")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "task 8, attempt 1" in out and "failed, exit 3" in out and 'inputs:   ["7"]' in out
    assert "--- stdout (6 bytes)\nout 7\n" in out and "err 7" in out
    p = pardo("show", store, "10")
    assert "timeout" in p.stdout.decode() and "tree dead" in p.stdout.decode()
    p = pardo("show", store, "999")
    assert p.returncode == 1
    assert p.stderr.decode().strip() == (f"pardo show: task 999 has no record in {store} "
                                         "(it never completed)")


def test_export_jsonl_round_trips(store):
    p = pardo("export", store, "--format", "jsonl")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    with StoreReader(store) as rd:
        attempts = list(rd.attempts())
    assert len(lines) == len(attempts) == 40
    for line, a in zip(lines, attempts):
        d = json.loads(line)
        for k in ("seq", "args", "command", "attempt", "status", "returncode", "signal", "slot",
                  "started_at", "duration", "cpu_user", "cpu_sys", "max_rss", "error", "host"):
            assert d[k] == a[k], k
        for name in ("stdout", "stderr"):
            got = (d[name].encode() if d[name] is not None
                   else base64.b64decode(d[name + "_base64"]))
            assert got == a[name]
    assert json.loads(lines[5])["stdout"] is None  # task 6 wrote \377\376
    assert base64.b64decode(json.loads(lines[5])["stdout_base64"]) == b"\xff\xfe"


def test_export_csv_round_trips(store, tmp_path):
    out = tmp_path / "x.csv"
    p = pardo("export", store, "--format", "csv", "-o", str(out))
    assert p.returncode == 0, p.stderr
    with StoreReader(store) as rd:
        attempts = list(rd.attempts())
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    for row, a in zip(rows, attempts):
        assert int(row["seq"]) == a["seq"] and json.loads(row["args"]) == a["args"]
        assert row["command"] == a["command"] and row["status"] == a["status"]
        assert float(row["duration"]) == a["duration"]
        assert (row["returncode"] or None) == (None if a["returncode"] is None
                                               else str(a["returncode"]))
        so = base64.b64decode(row["stdout_base64"]) if row["stdout_base64"] else row[
            "stdout"].encode()
        assert so == a["stdout"]


def test_export_joblog_is_gnu_parallels_and_reads_back(store, tmp_path):
    out = tmp_path / "log.tsv"
    assert pardo("export", store, "--format", "joblog", "-o", str(out)).returncode == 0
    data = out.read_bytes()
    assert data.startswith(HEADER.encode())
    logged = read_joblog(str(out))
    with StoreReader(store) as rd:
        finals = {a["seq"]: a for a in rd.attempts(final_only=True)}
    assert set(logged) == set(finals)
    for seq, j in logged.items():
        a = finals[seq]
        assert j.command == a["command"]
        want = {"ok": (0, 0), "failed": (3, 0), "timeout": (-1, 15)}[a["status"]]
        assert (j.exitval, j.signal) == want
    row = data.decode().splitlines()[1].split("\t")
    assert row[1] == ":" and len(row[2].split(".")[1]) == 3 and len(row[3]) == 10


def test_readers_refuse_what_is_not_a_store(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n" * 100)
    for cmd in (["status"], ["show", None, "1"], ["export"]):
        args = [str(bad) if a is None else a for a in cmd] + ([] if None in cmd else [str(bad)])
        p = pardo(*args)
        assert p.returncode == 1
        err = p.stderr.decode()
        assert err.count("\n") == 1 and "is not a pardo store" in err, err
    p = pardo("status", str(tmp_path / "missing.db"))
    assert p.returncode == 1 and "no store at" in p.stderr.decode()


def test_status_watch_follows_a_run_until_it_ends(tmp_path):
    path = str(tmp_path / "runs.db")
    writer = textwrap.dedent(f"""
        import signal, sys, time
        signal.alarm(60)
        sys.path.insert(0, {os.path.join(os.path.dirname(__file__), os.pardir, "helpers")!r})
        from storehelp import make_result
        from pardo._store import StoreSink
        s = StoreSink({path!r})
        s.run_started(template="t")
        print("started", flush=True)
        for i in range(1, 21):
            s.task_done(i, (str(i),), "t", 1, make_result())
            time.sleep(0.05)
        s.run_ended("completed")
    """)
    w = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE)
    try:
        assert w.stdout.readline() == b"started\n"
        p = pardo("status", "--watch", "--interval", "0.1", path)
        assert p.returncode == 0, p.stderr
        out = p.stdout.decode()
        assert "(completed)" in out and "20" in out
    finally:
        w.kill()
        w.wait()


def test_status_of_an_interrupted_run(tmp_path):
    path = str(tmp_path / "runs.db")
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.join(os.path.dirname(__file__), os.pardir, "helpers")!r})
        from storehelp import make_result
        from pardo._store import StoreSink
        s = StoreSink({path!r})
        s.run_started(template="t")
        s.task_done(1, ("1",), "t", 1, make_result())
        s.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
    out = pardo("status", path, env={**os.environ, "COLUMNS": "200"}).stdout.decode()
    assert "died (no end recorded; --resume runs the rest)" in out


def test_default_store_from_the_environment(tmp_path):
    path = str(tmp_path / "runs.db")
    s = StoreSink(path)
    s.run_started(template="t")
    s.task_done(1, ("1",), "t", 1, make_result())
    s.run_ended("completed")
    p = pardo("status", "--json", env={**os.environ, "PARDO_STORE": path})
    assert json.loads(p.stdout)["tasks"] == 1
    p = pardo("status", cwd=str(tmp_path), env={k: v for k, v in os.environ.items()
                                                if k != "PARDO_STORE"})
    assert p.returncode == 1 and "no store given" in p.stderr.decode()
