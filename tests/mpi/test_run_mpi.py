"""``pardo run --mpi`` under a real mpiexec: the same bytes and exit status as a local run,
work on the worker ranks, deadlines and tree kills there, and a lost rank."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mpi_support import MPIEXEC, PARDO, env, joblog_rows, mpirun, rank_pid, started

sys.path.insert(0, str(Path(__file__).parent.parent / "zoo"))
import audit

CMD = "printf '%s|%s\\n' {} {#}; printf 'err %s\\n' {} >&2; exit $(( {} % 3 ))"


def local(args, input=None):
    return subprocess.run([PARDO, "run", *args], input=input, capture_output=True, check=False,
                          env=env(), timeout=60)


@pytest.mark.parametrize("n", [1, 3])
def test_keep_order_output_is_byte_identical_to_a_local_run(n, tmp_path):
    data = "".join(f"v{i} x\n" for i in range(300)).encode()
    args = ["-k", "--joblog", str(tmp_path / "jl"), "--jobs-per-rank", "2"]
    got = mpirun(n, [PARDO, "run", "--mpi", *args, CMD.replace("{} %", "{#} %")], input=data)
    want = local(["-k", CMD.replace("{} %", "{#} %")], input=data)
    assert got.stdout == want.stdout
    assert got.stderr.replace(b"pardo run: --mpi in an MPI job of one process: running "
                              b"locally\n", b"") == want.stderr
    assert got.returncode == want.returncode == 101  # 200 of 300 exit non-zero
    rows = joblog_rows(tmp_path / "jl")
    assert sorted(rows) == list(range(1, 301))
    hosts = {h.split("@")[0] for h, *_ in rows.values()}
    if n == 1:
        assert hosts == {":"}  # ran locally
    else:
        # work spread over both worker ranks, never on rank 0
        assert hosts == {"1", "2"}
        assert all(h.endswith("@" + os.uname().nodename) for h, *_ in rows.values())


def test_exit_status_and_values_as_a_local_run():
    for args in (["exit {}", ":::", "0", "3", "0"], ["true", ":::", "a", "b"],
                 ["--halt", "now,fail=1", "exit {}", ":::", "0", "7"]):
        got = mpirun(3, [PARDO, "run", "--mpi", *args])
        want = local(args)
        assert got.returncode == want.returncode, (args, got.stderr)


def test_deadline_kills_the_whole_tree_on_the_worker_rank():
    token = f"pardompi{secrets.token_hex(4)}"
    # a leader and a background grandchild, both carrying the token in their environment
    cmd = f"env {token}=1 sh -c 'sleep 30 & sleep 30'"
    t0 = time.monotonic()
    got = mpirun(3, [PARDO, "run", "--mpi", "--timeout", "0.5", "--kill-grace", "0.2",
                     "--joblog", "-", cmd + " {}", ":::", "1", "2", "3", "4"], timeout=30)
    assert time.monotonic() - t0 < 15
    assert got.returncode == 4
    assert got.stderr.count(b"timed out") == 4
    rows = [ln.split("\t") for ln in got.stdout.decode().splitlines()[1:]]
    assert {(r[6], r[7]) for r in rows} == {("-1", "15")}
    assert {r[1].split("@")[0] for r in rows} <= {"1", "2"}
    assert audit.survivors(token, settle=2.0) == []


def test_stop_kills_remote_tasks_and_the_job_ends():
    token = f"pardompi{secrets.token_hex(4)}"
    argv = [MPIEXEC, "-n", "3", PARDO, "run", "--mpi",
            f"env {token}=1 sh -c 'sleep 30 & sleep 30'", ":::", "1", "2", "3"]
    with started(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        end = time.monotonic() + 20
        while len(audit.token_processes(token)) < 6 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(audit.token_processes(token)) >= 6
        p.send_signal(signal.SIGINT)  # Ctrl-C: mpiexec is what the terminal signals
        p.wait(timeout=20)
    assert audit.survivors(token, settle=2.0) == []


def test_a_killed_worker_rank_ends_the_job_and_resume_runs_exactly_the_rest(tmp_path):
    jl = tmp_path / "jl"
    n = 120
    cmd = "sleep 0.05; echo out{}"
    argv = [MPIEXEC, "-n", "3", PARDO, "run", "--mpi", "--jobs-per-rank", "2", "--joblog",
            str(jl), cmd, ":::", *map(str, range(1, n + 1))]
    with started(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as p:
        end = time.monotonic() + 30
        while time.monotonic() < end and (not jl.exists() or
                                          jl.read_text().count("\n") < 20):
            time.sleep(0.02)
        victim = rank_pid(p.pid, 2)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        first_out, _ = p.communicate(timeout=30)  # bounded: no hang, ever
        took = time.monotonic() - t0
    assert p.returncode != 0
    assert took < 20
    first = joblog_rows(jl)
    assert 20 <= len(first) < n  # stopped mid-run, rows whole
    # (mpiexec adds its BAD TERMINATION banner to stdout)
    printed = {w for w in first_out.decode().split() if w.startswith("out")}
    logged = {f"out{s}" for s in first}
    # a task's output is written just before its row: a kill between leaves one extra
    assert logged <= printed and len(printed - logged) <= 1
    again = mpirun(3, [PARDO, "run", "--mpi", "--resume", "--joblog", str(jl), cmd, ":::",
                       *map(str, range(1, n + 1))])
    assert again.returncode == 0, again.stderr
    both = joblog_rows(jl)
    rest = set(both) - set(first)
    assert set(both) == set(range(1, n + 1))
    assert set(again.stdout.decode().split()) == {f"out{s}" for s in rest}
    # the resumed run logged exactly the rest: one new row per missing seq, none again
    assert len(jl.read_text().splitlines()) - 1 == n


def test_mpi_without_a_launcher_runs_locally_and_says_so():
    got = subprocess.run([PARDO, "run", "--mpi", "echo", ":::", "a"], capture_output=True,
                         check=False, env=env(), timeout=60)
    assert got.returncode == 0 and got.stdout == b"a\n"
    assert b"running locally" in got.stderr


def test_jobs_per_rank_needs_mpi():
    got = local(["--jobs-per-rank", "2", "true", ":::", "a"])
    assert got.returncode == 255 and b"--jobs-per-rank needs --mpi" in got.stderr


def test_line_buffer_is_refused_with_mpi_and_every_rank_exits():
    got = mpirun(3, [PARDO, "run", "--mpi", "--line-buffer", "echo", ":::", "a"], timeout=30)
    assert got.returncode == 255
    assert b"--line-buffer and --pin need the tasks on this machine" in got.stderr
