"""End-to-end tests of ``pardo run``: the real command, its output and its exit status."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pardo_cli import pardo_cmd, run  # tests/helpers, on sys.path through conftest.py


def test_values_are_data_never_code(tmp_path):
    marker = tmp_path / "pwned"
    p = run(["-k", "echo", ":::", f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`"])
    assert p.returncode == 0
    assert not marker.exists()
    assert p.stdout.decode().splitlines() == [f"; touch {marker}", f"$(touch {marker})",
                                              f"`touch {marker}`"]


def test_exit_status_counts_failures():
    assert run(["exit {}", ":::", "0", "0"]).returncode == 0
    assert run(["exit {}", ":::", "1", "2", "0", "5"]).returncode == 3
    vals = [str(1 + i % 3) for i in range(103)]
    assert run(["-j4", "exit {}", ":::"] + vals).returncode == 101


def test_unknown_option_suggests_the_closest():
    p = run(["--keep-ordr", "echo", ":::", "a"])
    assert p.returncode == 255
    assert p.stderr.decode() == ("pardo run: unknown option --keep-ordr; "
                                 "did you mean --keep-order?\n")


@pytest.mark.parametrize("args,needle", [
    (["echo", ":::"], ":::"),
    (["echo", "::::", "/nonexistent/file"], "/nonexistent/file"),
    (["-j", "many", "echo", ":::", "a"], "-j"),
    (["--halt", "sometimes", "echo", ":::", "a"], "--halt"),
    (["--timeout", "soon", "echo", ":::", "a"], "--timeout"),
    (["echo {= s/( =}", ":::", "a"], "perl expression"),
    (["--resume", "echo", ":::", "a"], "--joblog"),
])
def test_bad_input_is_one_line_not_a_traceback(args, needle):
    p = run(args)
    assert p.returncode == 255
    err = p.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err


def test_missing_program_is_an_error_for_that_task_only():
    p = run(["-k", "{}", ":::", "no-such-program-xyz", "echo fine"])
    assert p.stdout == b"fine\n"
    assert p.returncode == 1
    assert b"no-such-program-xyz" in p.stderr


def test_argument_over_the_system_limit_fails_that_task_only():
    huge = "x" * (os.sysconf("SC_ARG_MAX") + 10)
    p = run(["-k", "echo", "{}", "::::", "-"], stdin=(huge + "\nsmall\n").encode())
    assert p.stdout == b"small\n"
    assert p.returncode == 1


def test_non_utf8_input_passes_through():
    data = b"\xff\xfe a\n\x80\n"
    p = run(["-k", "printf '%s\\n'"], stdin=data)
    assert p.stdout == data


def test_keep_order_under_random_durations():
    vals = [f"0.0{i % 7}" for i in range(40)]
    p = run(["-k", "-j8", "sleep {}; echo {#}", ":::"] + vals)
    assert p.stdout.decode().split() == [str(i) for i in range(1, 41)]


def test_timeout_kills_and_counts_as_failure(tmp_path):
    t0 = time.monotonic()
    p = run(["--timeout", "0.5", "-k", "{}", ":::", "sleep 30", "echo ok"])
    assert time.monotonic() - t0 < 10
    assert p.stdout == b"ok\n"
    assert p.returncode == 1
    assert b"timed out" in p.stderr


def test_timeout_percent_of_median(tmp_path):
    vals = ["0.1"] * 6 + ["30"]
    log = tmp_path / "log"
    t0 = time.monotonic()
    p = run(["-j1", "--timeout", "300%", "--joblog", str(log), "sleep", ":::"] + vals)
    assert time.monotonic() - t0 < 10
    assert p.returncode == 1
    rows = [r.split("\t") for r in log.read_text().splitlines()[1:]]
    assert [(r[6], r[7]) for r in rows][-1] == ("-1", "15")


def test_retries(tmp_path):
    counter = tmp_path / "n"
    p = run(["--retries", "3", f"echo x >> {counter}; exit 1", ":::", "a"])
    assert p.returncode == 1
    assert counter.read_text().count("x") == 3
    counter.write_text("")
    # succeeds on the second attempt: not a failure, one output
    p = run(["--retries", "3",
             f"echo x >> {counter}; test $(wc -l < {counter}) -ge 2 && echo done {{}}",
             ":::", "a"])
    assert p.returncode == 0 and p.stdout == b"done a\n"


def test_halt_now_kills_running_and_exits_with_the_failing_status():
    t0 = time.monotonic()
    p = run(["-j2", "--halt", "now,fail=1", "{}", ":::", "sleep 20", "sleep 0.2; exit 7"])
    assert time.monotonic() - t0 < 10
    assert p.returncode == 7
    # one line says which task stopped the run, as GNU parallel does
    assert b"pardo: --halt now,fail=1: stopped after task 2 exited 7: sleep 0.2; exit 7\n" \
        in p.stderr, p.stderr


def test_halt_soon_lets_running_finish():
    p = run(["-j2", "--halt", "soon,fail=1", "-k", "{}", ":::", "sleep 1; echo slow",
             "exit 4", "echo never"])
    assert p.returncode == 4
    assert p.stdout == b"slow\n"


def test_joblog_resume_runs_exactly_the_rest(tmp_path):
    log = tmp_path / "log"
    out = tmp_path / "out"
    vals = ["1", "2", "3", "4"]
    p = run(["--joblog", str(log), "-j1", "--halt", "now,fail=1",
             f"echo {{}} >> {out}; test {{}} != 3", ":::"] + vals)
    assert p.returncode == 1
    assert out.read_text().split() == ["1", "2", "3"]
    p = run(["--joblog", str(log), "--resume", "-j1", f"echo {{}} >> {out}", ":::"] + vals)
    assert p.returncode == 0
    assert out.read_text().split() == ["1", "2", "3", "4"]
    p = run(["--joblog", str(log), "--resume-failed", "-j1", f"echo {{}} >> {out}", ":::"] + vals)
    assert out.read_text().split() == ["1", "2", "3", "4", "3"]
    seqs = [r.split("\t")[0] for r in log.read_text().splitlines()]
    assert seqs == ["Seq", "1", "2", "3", "4", "3"]


def test_retry_failed_uses_the_joblog_commands(tmp_path):
    log = tmp_path / "log"
    run(["--joblog", str(log), "-k", "echo {}; exit {}", ":::", "0", "2"])
    p = run(["--joblog", str(log), "--retry-failed"], stdin=b"")
    assert p.stdout == b"2\n"
    assert p.returncode == 1


def test_results_dir(tmp_path):
    res = tmp_path / "res"
    p = run(["--results", str(res), "echo", ":::", "a", "b/c", ":::", "1"])
    assert p.returncode == 0
    assert (res / "1" / "a" / "2" / "1" / "stdout").read_bytes() == b"a 1\n"
    assert (res / "1" / "b\\_c" / "2" / "1" / "seq").read_bytes() == b"2\n"


def test_summary_on_request():
    p = run(["--summary", "exit {}", ":::", "0", "3"])
    err = p.stderr.decode()
    assert re.search(r"pardo: 2 tasks in [\d.]+ s \(1 failed, 1 ok\)", err), err
    assert "exited 3" in err and "p50" in err


def test_ungroup_passes_output_straight_through():
    p = run(["-u", "-j1", "echo", ":::", "a", "b"])
    assert p.stdout == b"a\nb\n"


def test_pin_puts_each_slot_on_its_own_cpu():
    cpus = sorted(os.sched_getaffinity(0))
    p = run(["--pin", f"-j{len(cpus)}", "-k",
             "sleep 0.2; grep Cpus_allowed_list /proc/self/status", ":::"]
            + [str(i) for i in range(len(cpus))])
    got = sorted(line.split()[-1] for line in p.stdout.decode().splitlines())
    assert got == sorted(str(c) for c in cpus)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_kills_and_flushes(tmp_path, sig, code):
    log = tmp_path / "log"
    token = f"pardo-sigtest-{os.getpid()}-{sig}"
    p = subprocess.Popen(pardo_cmd() + ["-j2", "--joblog", str(log), "{}", ":::", "echo quick",
                                        f"sleep 60 # {token}", f"sleep 61 # {token}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _survivors(token) < 2:
            time.sleep(0.05)
        p.send_signal(sig)
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == code
    assert out == b"quick\n"
    time.sleep(0.2)
    assert _survivors(token) == 0
    assert log.read_text().startswith("Seq\t")


def test_sigkill_of_pardo_leaves_no_task_behind():
    token = f"pardo-killtest-{os.getpid()}"
    p = subprocess.Popen(pardo_cmd() + ["-j2", "{}", ":::", f"sleep 60 # {token}",
                                        f"sh -c 'sleep 61; : {token}'"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _survivors(token) < 2:
            time.sleep(0.05)
        assert _survivors(token) >= 2
        p.kill()
        p.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _survivors(token):
            time.sleep(0.05)
        assert _survivors(token) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _survivors(token):
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if token.encode() in cmd and b"pytest" not in cmd and b"pardo._cli.run" not in cmd \
                and b"pardo run" not in cmd.replace(b"\0", b" "):
            n += 1
    return n


def _first_line_within(cmd, seconds, stdin=None):
    """Start cmd; return (first stdout line, seconds it took), then clean up."""
    p = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        line = p.stdout.readline()
        return p, line, time.monotonic() - t0
    finally:
        if stdin is None:
            p.kill()
            p.wait()


def test_line_buffer_prints_lines_while_the_task_runs():
    p, line, took = _first_line_within(pardo_cmd() + ["--line-buffer", "--tag",
                                                      "echo start; sleep 20", ":::", "x"], 10)
    assert line == b"x\tstart\n"
    assert took < 5


def test_group_mode_prints_a_task_whole_when_it_ends():
    p = run(["-j2", "--tag", "echo 1{}; sleep 0.{}; echo 2{}", ":::", "3", "1"])
    assert p.stdout == b"1\t11\n1\t21\n3\t13\n3\t23\n"


def test_stdin_streams_tasks_start_before_input_ends():
    p = subprocess.Popen(pardo_cmd() + ["echo", "got"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        p.stdin.write(b"first\n")
        p.stdin.flush()
        t0 = time.monotonic()
        assert p.stdout.readline() == b"got first\n"  # while stdin is still open
        assert time.monotonic() - t0 < 10
        p.stdin.write(b"second\n")
        p.stdin.close()
        assert p.stdout.read() == b"got second\n"
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_nothing_extra_on_stderr_when_it_is_not_a_terminal():
    p = run(["echo", ":::", "a"])
    assert p.stdout == b"a\n" and p.stderr == b""
    # --bar asks for progress: off a terminal, GNU parallel's plain lines (issue 15)
    p = run(["--bar", "echo", ":::", "a"])
    assert p.stdout == b"a\n" and p.stderr.startswith(b"100\n# ")


def test_bar_and_summary_on_a_terminal():
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(pardo_cmd() + ["--bar", "-j2", "sleep 0.3; echo {}", ":::", "1", "2",
                                            "3"], stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        out, _ = p.communicate(timeout=30)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert sorted(out.split()) == [b"1", b"2", b"3"]
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen).decode("utf-8", "replace")
    assert "3/3" in text and "ok 3" in text  # the bar, with counts per status
    assert "pardo: 3 tasks in" in text and "(3 ok)" in text  # the summary


def test_sigkill_mid_run_then_resume_runs_exactly_the_rest(tmp_path):
    log = tmp_path / "log"
    out = tmp_path / "out"
    flag = tmp_path / "flag"
    # jobs 1 and 2 finish at once; job 3 then waits for the flag, so the kill lands mid-run
    args = ["--joblog", str(log), "-j1",
            f"echo {{}} >> {out}; test {{}} -le 2 || test -e {flag} || sleep 30", ":::"] + [
        str(i) for i in range(1, 9)]
    p = subprocess.Popen(pardo_cmd() + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if log.exists() and log.read_text().count("\n") >= 3:  # header + 2 rows
                break
            time.sleep(0.02)
        p.kill()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    done_before = [r.split("\t")[0] for r in log.read_text().splitlines()[1:]]
    assert done_before == ["1", "2"]
    deadline = time.monotonic() + 5
    while _survivors(str(flag)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _survivors(str(flag)) == 0  # job 3's tree died with pardo
    flag.touch()
    assert run(["--resume"] + args).returncode == 0
    seqs = [int(r.split("\t")[0]) for r in log.read_text().splitlines()[1:]]
    assert sorted(seqs) == list(range(1, 9))  # every job logged exactly once
    assert set(out.read_text().split()) == {str(i) for i in range(1, 9)}


def test_closed_stdout_stops_the_run_with_141():
    p = subprocess.Popen(pardo_cmd() + ["-j1", "echo {}; sleep 0.1", ":::"] +
                         [str(i) for i in range(50)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"0\n"
        p.stdout.close()
        t0 = time.monotonic()
        assert p.wait(timeout=20) == 141
        assert time.monotonic() - t0 < 4  # it did not run the remaining 48 tasks
        assert b"Traceback" not in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_results_of_quick_tasks_are_not_held_back_by_slow_ones():
    """pardo run hands tasks to the engine ahead and takes results in batches (half of the
    tasks held); a batch that cannot fill because slow tasks hold every slot must still
    be handed over within ~20 ms (get_many's max_delay), not when the slow ones end."""
    # -j2: one slow task, two quick ones, then slow ones that take both slots
    values = ["0.8", "0", "0"] + ["0.8"] * 8
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "pardo", "run", "-j2", "sleep {}; echo {}",
                          ":::", *values], stdout=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in p.stdout:
            seen.append((time.monotonic() - t0, line.strip()))
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    quick = [t for t, v in seen if v == "0"]
    assert len(quick) == 2 and len(seen) == len(values)
    assert max(quick) < 0.6, f"quick results printed after {max(quick):.2f} s: {seen}"


def test_round_robin_says_when_every_job_left_before_the_input_ended():
    # GNU parallel dies of SIGPIPE here (exit 141); pardo says what was not fed
    data = b"".join(b"%d\n" % i for i in range(100_000))
    p = run(["--pipe", "-j2", "--block", "10k", "--round-robin", "head -c 10 >/dev/null"],
            stdin=data)
    assert p.returncode == 1
    assert p.stderr == (b"pardo: --round-robin: every job had exited before the input "
                        b"ended; the rest of the input was not read\n")
