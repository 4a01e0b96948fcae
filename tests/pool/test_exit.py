"""How a pool ends: at interpreter exit, after ``shutdown(wait=False)``, and when a
``with`` block is left normally or by an exception (Ctrl-C above all).

As with the standard library's executors, work that was submitted gets done before the
interpreter exits, whether the pool was shut down without waiting, left open, or dropped;
no worker outlives the interpreter. Leaving a ``with`` block by an exception, or
``terminate()``, stops at once: queued calls cancelled, running ones killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.usefixtures("no_leaks")

PRELUDE = textwrap.dedent(
    """
    import os, signal, sys, time
    import pardo
    signal.alarm(60)  # a broken build cannot leave this script running

    def note(path, i):
        time.sleep(0.3)
        with open(path, "a") as f:
            f.write(f"{i} {os.getpid()}\\n")
        return i
    """
)

ENDINGS = {
    "shutdown_nowait": "p.shutdown(wait=False)",
    "left_open": "pass",
    "dropped": "del p, futs",
}


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.mark.parametrize("backend", ["process", "thread"])
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_submitted_work_is_done_before_the_interpreter_exits(tmp_path, backend, ending):
    out = tmp_path / "done"
    script = PRELUDE + textwrap.dedent(
        f"""
        p = pardo.Pool(2, backend={backend!r})
        futs = [p.submit(note, {str(out)!r}, i) for i in range(6)]
        {ENDINGS[ending]}
        print("leaving", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["leaving"]
    lines = out.read_text().split("\n")[:-1]
    assert sorted(int(line.split()[0]) for line in lines) == list(range(6)), proc.stderr
    if backend == "process":
        pids = {int(line.split()[1]) for line in lines}
        assert pids and os.getpid() not in pids
        assert all(_gone(pid) for pid in pids), "a worker outlived the interpreter"


WITH_SCRIPT = PRELUDE + textwrap.dedent(
    """
    def say(text):
        os.write(1, f"{text}\\n".encode())  # one write: lines from workers never mix

    def pid_then_sleep(seconds):
        say(os.getpid())
        time.sleep(seconds)
        return seconds

    futs = []
    try:
        with pardo.Pool(2, backend=sys.argv[1]) as p:
            futs = [p.submit(pid_then_sleep, float(sys.argv[2])) for _ in range(6)]
            say("submitted")
            for f in futs:
                f.result()
    except KeyboardInterrupt:
        say("interrupted")
    states = []
    for f in futs:
        if f.cancelled():
            states.append("cancelled")
        elif f.exception() is None:
            states.append("ok")
        else:
            states.append(type(f.exception()).__name__)
    say(" ".join(states))
    """
)


def _start_with_block(backend, seconds):
    return subprocess.Popen(
        [sys.executable, "-c", WITH_SCRIPT, backend, str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_until_running(proc):
    """The pids that print they run a call, once two do and the block has submitted."""
    pids = []
    submitted = False
    while len(pids) < 2 or not submitted:  # both workers are running a call
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if line.strip() == "submitted":
            submitted = True
        else:
            pids.append(int(line))
    return pids


def test_ctrl_c_in_a_with_block_stops_the_running_calls_promptly():
    proc = _start_with_block("process", 30)
    try:
        pids = _wait_until_running(proc)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    lines = out.split("\n")
    assert "interrupted" in lines, out + err
    states = lines[lines.index("interrupted") + 1].split()
    # The two running calls were killed with their workers (with the calls already
    # handed to those workers); the others were cancelled. None ran to its end.
    assert len(states) == 6 and set(states) <= {"BrokenPool", "cancelled"}, out
    assert states.count("BrokenPool") >= 2 and "cancelled" in states, out
    assert elapsed < 5, f"Ctrl-C took {elapsed:.1f} s to leave the block"
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids), "a worker outlived the interrupted block"


def test_ctrl_c_in_a_thread_pool_with_block_cancels_what_is_queued():
    proc = _start_with_block("thread", 1.0)
    try:
        _wait_until_running(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    lines = out.split("\n")
    states = lines[lines.index("interrupted") + 1].split()
    # Threads cannot be killed: the two running calls finish; the four queued never run.
    assert sorted(states) == ["cancelled"] * 4 + ["ok"] * 2, out


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_leaving_a_with_block_normally_still_waits(tmp_path, backend):
    out = tmp_path / "done"
    script = PRELUDE + textwrap.dedent(
        f"""
        with pardo.Pool(2, backend={backend!r}) as p:
            futs = [p.submit(note, {str(out)!r}, i) for i in range(6)]
        print(sum(f.done() for f in futs), [f.result() for f in futs], flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "6 [0, 1, 2, 3, 4, 5]"


def test_an_exception_leaving_a_with_block_kills_running_calls():
    import pardo

    start = time.monotonic()
    with pytest.raises(LookupError), pardo.Pool(1) as p:
        running = p.submit(time.sleep, 30)
        queued = p.submit(time.sleep, 30)
        while not running.running():
            time.sleep(0.01)
        raise LookupError("leaving")
    assert time.monotonic() - start < 10
    assert queued.cancelled()
    with pytest.raises(pardo.BrokenPool, match="terminated"):
        running.result(timeout=10)


def test_terminate_kills_and_cancels():
    import pardo

    p = pardo.Pool(1)
    running = p.submit(time.sleep, 30)
    queued = p.submit(time.sleep, 30)
    while not running.running():
        time.sleep(0.01)
    start = time.monotonic()
    p.terminate()
    assert time.monotonic() - start < 10
    assert queued.cancelled()
    with pytest.raises(pardo.BrokenPool, match="terminated"):
        running.result(timeout=10)
    with pytest.raises(RuntimeError, match="after shutdown"):
        p.submit(time.sleep, 0)


INTERRUPTED_EXIT = PRELUDE + textwrap.dedent(
    """
    def pid_then_sleep(seconds):
        os.write(1, f"{os.getpid()}\\n".encode())  # one write: lines never mix
        time.sleep(seconds)

    p = pardo.Pool(2)
    futs = [p.submit(pid_then_sleep, 30) for _ in range(2)]
    os.write(1, b"leaving\\n")
    """
)


def test_ctrl_c_while_the_exit_waits_for_a_pool_kills_its_workers():
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_EXIT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert "leaving" in lines, proc.stderr.read()
        pids = [int(x) for x in lines if x != "leaving"]
        time.sleep(0.3)  # the interpreter is in its exit wait by now
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    assert elapsed < 5, f"exit took {elapsed:.1f} s after Ctrl-C"
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids)
