"""Who gets woken, and when: the launch path must not wake threads that have nothing to do.

Regression tests for three wake-ups that cost throughput: every task's exit woke Python's
main thread (a SIGCHLD queued for the process because the supervisor thread blocked it),
every finished task woke a consumer that had asked for a batch, and every submit to a full
limited queue woke the supervisor thread. The fixes change who is woken, so these tests
also check that nothing is lost: a SIGCHLD handler still runs, batches still arrive, and
tasks submitted from many threads to a full queue all run."""

import subprocess
import sys
import threading

import pardo


def _main_thread_switches() -> int:
    tid = threading.get_native_id()
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def test_waiting_for_a_batch_sleeps_through_the_tasks_before_it():
    n = 200
    q = pardo.ResultQueue(max_running=2)
    pardo.run(["true"])
    tasks = [pardo.spawn(["true"], timeout=60, queue=q) for _ in range(n)]
    before = _main_thread_switches()
    got = q.get_many(max_items=n, min_items=n, timeout=60)
    switches = _main_thread_switches() - before
    assert len(got) == n and all(t.result.ok for t in tasks)
    # One wake-up for the batch, plus one per 50 ms slice of the wait (Ctrl-C checks);
    # a wake-up per task (SIGCHLD, or a notify per finished task) gives hundreds.
    assert switches < n // 4, f"main thread woken {switches} times for {n} tasks"


HANDLER_SCRIPT = r"""
import signal, sys, pardo
seen = []
signal.signal(signal.SIGCHLD, lambda *a: seen.append(1))
q = pardo.ResultQueue(max_running=2)
tasks = [pardo.spawn(["sh", "-c", "echo out; echo err >&2"], timeout=60, queue=q)
         for _ in range(150)]
got = 0
while got < len(tasks):
    got += len(q.get_many(timeout=60))
bad = [t.result for t in tasks if not (t.result.ok and t.result.stdout == b"out\n"
                                       and t.result.stderr == b"err\n")]
late = pardo.run(["sleep", "5"], timeout=0.2)
# On the shepherd rung tasks are not this process's children (pardo's launcher forks them):
# whatever the rung, the handler must run for a child this process starts itself.
before = len(seen)
import subprocess
subprocess.run(["true"])
import time
deadline = time.monotonic() + 5
while len(seen) == before and time.monotonic() < deadline:
    time.sleep(0.01)
print(len(bad), late.status.value, round(late.duration, 2), len(seen) > before)
"""


def test_a_sigchld_handler_still_runs_and_nothing_breaks():
    """The supervisor thread leaves SIGCHLD unblocked; with a Python handler installed it
    may take the signal itself (its system calls then see EINTR): every task must still
    complete with its output, deadlines must still fire, and the handler must run for the
    process's own children (on the shepherd rung pardo's tasks are its launcher's)."""
    p = subprocess.run([sys.executable, "-c", HANDLER_SCRIPT], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    bad, status, duration, handled = p.stdout.split()
    assert bad == "0"
    assert status == "timeout" and float(duration) < 2.0
    assert handled == "True"


def test_submitters_racing_a_full_queue_lose_no_task():
    """Submits to a full limited queue do not wake the supervisor; the next free slot makes
    it take them. Many threads submitting while tasks finish must not strand any."""
    q = pardo.ResultQueue(max_running=2)
    per_thread, threads = 60, 6
    errors = []

    def submit():
        try:
            for _ in range(per_thread):
                pardo.spawn(["true"], timeout=60, queue=q)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=submit) for _ in range(threads)]
    for w in workers:
        w.start()
    got = []
    while len(got) < per_thread * threads:
        batch = q.get_many(timeout=30)
        assert batch, f"stalled with {len(got)} of {per_thread * threads} tasks back"
        got += batch
    for w in workers:
        w.join()
    assert not errors
    assert all(t.result.ok for t in got)


def _supervisor_cpu() -> float:
    import os
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            st = f.read()
        if "(pardo-supervise)" in st:
            fields = st[st.rindex(")") + 2:].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    raise AssertionError("no pardo-supervise thread")


def test_fd_copies_in_a_forked_child_do_not_make_the_supervisor_spin():
    """The supervisor closes a reaped task's pidfd (and pipes whose write end it held)
    without removing them from epoll first: their registrations are one-shot and spent,
    or quiet. A forked child that holds copies of those fds keeps the registrations alive
    after our close; they must stay silent, not report readiness round after round."""
    import os
    import signal
    import time

    q = pardo.ResultQueue()
    pardo.run(["true"])
    slow = [pardo.spawn(["sleep", "0.3"], timeout=30, queue=q) for _ in range(2)]
    pid = os.fork()
    if pid == 0:  # holds copies of every fd of ours, including those of the sleeps
        signal.alarm(10)
        time.sleep(4)
        os._exit(0)
    try:
        got = 0
        while got < len(slow):
            got += len(q.get_many(timeout=10))
        assert all(t.result.ok for t in slow)
        cpu0 = _supervisor_cpu()
        n = 300
        q2 = pardo.ResultQueue(max_running=2)
        for _ in range(n):
            pardo.spawn(["true"], timeout=30, queue=q2)
        got = 0
        while got < n:
            got += len(q2.get_many(timeout=30))
        per_task = (_supervisor_cpu() - cpu0) / n
        # ~0.1 ms normally; a registration firing in every epoll round costs far more
        assert per_task < 0.001, f"supervisor thread used {per_task * 1e3:.2f} ms per task"
        time.sleep(0.2)  # idle now: a spinning supervisor keeps burning CPU
        idle0 = _supervisor_cpu()
        time.sleep(0.5)
        assert _supervisor_cpu() - idle0 < 0.05, "the idle supervisor is busy"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_batch_waits_no_longer_than_max_delay_for_a_slow_task():
    import time

    import pytest

    q = pardo.ResultQueue()
    fast = [pardo.spawn(["true"], queue=q) for _ in range(2)]
    slow = pardo.spawn(["sleep", "5"], timeout=30, queue=q)
    try:
        t0 = time.monotonic()
        got = q.get_many(min_items=3, max_delay=0.1, timeout=20)
        took = time.monotonic() - t0
        assert sorted(t.id for t in got) == sorted(t.id for t in fast)
        assert took < 3, f"the batch waited {took:.2f} s for the slow task"
        # only the slow one is left: the call waits its whole timeout and returns nothing
        t0 = time.monotonic()
        assert q.get_many(min_items=3, timeout=0.3) == []
        assert time.monotonic() - t0 >= 0.25
        with pytest.raises(ValueError):
            q.get_many(min_items=2, max_delay=-1)
    finally:
        slow.kill()
        slow.wait()


def test_min_items_counts_only_what_is_in_flight():
    q = pardo.ResultQueue()
    tasks = [pardo.spawn(["true"], queue=q) for _ in range(3)]
    got = q.get_many(min_items=100, timeout=20)  # asks for more than there can ever be
    assert len(got) == 3 and all(t.result.ok for t in tasks)
