"""The engine under faults: a GIL held in C, a supervisor killed with SIGKILL, bad input.

Every test here checks that it leaves no fd, live child or zombie child behind in the
test process (the ``no_leaks`` fixture of conftest.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pardo

# tests/zoo is on sys.path (conftest.py puts it there)
import audit
from support import (SYSTEM_PYTHON, as_nobody_argv, cgroup2_writable, nobody_env, supervisor_owner,
                     wait_for_processes)

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_deadline_fires_while_main_thread_holds_the_gil(zoo):
    """The supervisor needs no GIL: a 0.3 s deadline kills the task on time while the
    main thread sits for 1.5 s inside a C call that keeps the GIL (ctypes.PyDLL)."""
    libc = ctypes.PyDLL(ctypes.util.find_library("c"))  # PyDLL: the GIL stays held
    libc.usleep.argtypes = [ctypes.c_uint]
    ticks = []
    stop = threading.Event()

    def ticker():  # proves the GIL really was held: it cannot tick meanwhile
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    token = zoo.token()
    th = threading.Thread(target=ticker)
    th.start()
    try:
        t = pardo.spawn(zoo.argv("tree", token), env=zoo.env(token), timeout=0.3)
        t0 = time.monotonic()
        libc.usleep(1_500_000)
        t1 = time.monotonic()
    finally:
        stop.set()
        th.join()
    r = t.wait(timeout=10)
    assert t1 - t0 >= 1.4
    assert not [x for x in ticks if t0 + 0.05 < x < t1 - 0.05], "the GIL was not held"
    assert r.status == "timeout", r
    assert 0.3 <= r.duration < 0.8, f"deadline 0.3 s fired after {r.duration:.3f} s"
    assert audit.survivors(token) == []


SUPERVISOR_SCRIPT = textwrap.dedent("""
    import sys, pardo
    zoo, token = sys.argv[1], sys.argv[2]
    env = {"PARDO_ZOO_TOKEN": token, "PATH": "/usr/bin:/bin"}
    tasks = [pardo.spawn([zoo, mode, token], env=env)
             for mode in ("tree", "setsid", "termignore", "forkstorm")]
    print(pardo.isolation(), *[t.pid for t in tasks], flush=True)
    for t in tasks:
        t.wait()
""")
# tree 1+3+9, setsid 2, termignore 5, forkstorm at least 1+8+64 (its leaves keep forking)
SUPERVISOR_TREES = 13 + 2 + 5 + 73


def _cgroup_of(pid):
    """The cgroup v2 path of ``pid`` below the cgroup2 mount, or None."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


@pytest.mark.parametrize("rung", ["cgroup", "shepherd", "shepherd-nobody"])
def test_supervisor_killed_leaves_no_survivors(zoo, rung, request):
    """SIGKILL the Python process that owns running trees (one with escapees, a TERM
    ignorer and a fork storm): every task process dies within 2 s; in the cgroup rung a
    later supervisor leaves no cgroup of the dead one behind."""
    if rung == "cgroup" and not cgroup2_writable():
        pytest.skip("no writable cgroup2 here (not root, or read-only cgroupfs)")
    token = zoo.token()
    script = zoo.dir / f"owner-{token}.py"
    script.write_text(SUPERVISOR_SCRIPT)
    script.chmod(0o644)
    argv = [sys.executable, str(script), str(zoo.bin), token]
    env = {**os.environ, "PARDO_ISOLATION": rung}
    if rung == "shepherd-nobody":
        argv = as_nobody_argv([SYSTEM_PYTHON, *argv[1:]])
        env = nobody_env(request.getfixturevalue("nobody_pythonpath"), zoo.dir)
    with supervisor_owner(argv, env, zoo.dir, script, token) as (p, line):
        assert line and line[0].decode() == rung.split("-")[0], (line, p.stderr.read1(4000))
        procs = wait_for_processes(token, SUPERVISOR_TREES)
        assert len(procs) >= SUPERVISOR_TREES, f"trees did not form: {procs}"
        groups = {_cgroup_of(x["pid"]) for x in procs} - {None}
        p.kill()
        p.wait()
        left = audit.survivors(token, settle=2.0)
        assert left == [], (f"{len(left)} task process(es) outlived their SIGKILLed "
                            f"supervisor: {left[:8]}")

    if rung == "cgroup":
        mount = audit.cgroup2_mount()
        leaves = [g for g in groups if g and g != "/"]
        assert leaves, f"task processes were not in a cgroup of their own: {groups}"
        # A new supervisor sweeps what dead ones left.
        r = subprocess.run([sys.executable, "-c", "import pardo; print(pardo.run(['true']).status)"],
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == "ok", r.stderr
        stale = [g for g in leaves if os.path.exists(mount + g)]
        assert not stale, f"cgroups of the dead supervisor still there: {stale}"


def test_cgroup_leaf_pool_stays_bounded(engine_started):
    """The cgroup rung may keep task leaves open for reuse, but their number follows the
    tasks in flight at once, not the tasks run."""
    if engine_started != "cgroup":
        pytest.skip(f"this process runs the {engine_started} rung")
    mount = audit.cgroup2_mount()

    leaf = re.compile(re.escape(mount) + r"/.*/t[0-9]+(?=/|$)")

    def leaves_open():
        """Task leaves (directories ``t<N>``) this process holds fds of."""
        return len({m.group() for t in audit.fd_table().values() if (m := leaf.match(t))})

    def batch(n):
        for t in [pardo.spawn(["/bin/true"]) for _ in range(n)]:
            assert t.wait(timeout=30).ok

    before = leaves_open()
    for _ in range(6):
        batch(20)
    for _ in range(50):
        batch(1)
    # 170 tasks, at most 20 at once: at most 20 leaves (or what earlier tests left open).
    assert 0 < leaves_open() <= max(before, 20), (before, leaves_open())


CTRL_C_SCRIPT = textwrap.dedent("""
    import sys, time, pardo
    zoo, token = sys.argv[1], sys.argv[2]
    env = {"PARDO_ZOO_TOKEN": token, "PATH": "/usr/bin:/bin"}
    print("running", flush=True)
    t0 = time.monotonic()
    try:
        pardo.run([zoo, "tree", token], env=env, timeout=30)
        print("returned", flush=True)
    except KeyboardInterrupt:
        print("interrupted", round(time.monotonic() - t0, 3), flush=True)
    time.sleep(30)  # stays alive: the tree must be gone without this process exiting
""")


@pytest.mark.parametrize("rung", ["cgroup", "shepherd"])
def test_ctrl_c_during_run_raises_and_kills_the_tree(zoo, rung):
    """SIGINT while run() waits: KeyboardInterrupt comes at once, and the task's tree is
    killed although the Python process lives on."""
    if rung == "cgroup" and not cgroup2_writable():
        pytest.skip("no writable cgroup2 here (not root, or read-only cgroupfs)")
    token = zoo.token()
    p = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(zoo.bin), token],
                         env={**os.environ, "PARDO_ISOLATION": rung},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 60)
        assert ready and p.stdout.readline() == b"running\n", p.stderr.read1(4000)
        _wait_for_procs(token, 1 + 13)
        p.send_signal(signal.SIGINT)
        ready, _, _ = select.select([p.stdout], [], [], 5)
        assert ready, "no KeyboardInterrupt within 5 s of SIGINT"
        line = p.stdout.readline().split()
        assert line[:1] == [b"interrupted"], (line, p.stderr.read1(4000))
        end = time.monotonic() + 2.0  # the owner carries the token in its argv: not counted
        while (left := [x for x in audit.token_processes(token) if x["pid"] != p.pid]):
            assert time.monotonic() < end, f"the tree outlived the interrupted run(): {left[:5]}"
            time.sleep(0.02)
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()
        audit.kill_all(audit.token_processes(token))


OUT_OF_FDS_SCRIPT = textwrap.dedent("""
    import collections, resource, pardo
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    tasks = [pardo.spawn(["sleep", "0.3"]) for _ in range(150)]
    kinds = collections.Counter()
    for t in tasks:
        r = t.wait(timeout=60)
        kinds["ok" if r.ok else f"{r.status}: {r.error}"] += 1
    after = pardo.run(["echo", "after"])
    print(dict(kinds))
    print(after.status, after.stdout)
""")


def test_out_of_descriptors_is_a_clear_error_and_the_engine_recovers():
    """More tasks at once than RLIMIT_NOFILE allows: each task either runs or ends with
    status "error" naming the cause; nothing hangs, and later tasks run again."""
    r = subprocess.run([sys.executable, "-c", OUT_OF_FDS_SCRIPT], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    kinds_line, after_line = r.stdout.strip().splitlines()
    kinds = eval(kinds_line)  # a dict printed by our own script
    assert sum(kinds.values()) == 150
    assert all(k == "ok" or ("error" in k and "Too many open files" in k) for k in kinds), kinds
    assert after_line == "ok b'after\\n'", after_line


# --- bad input: each a clear error --------------------------------------------------


def test_missing_program():
    r = pardo.run(["pzoo-no-such-program-x"])
    assert r.status == "error" and r.returncode is None
    assert "pzoo-no-such-program-x" in r.error and "No such file" in r.error, r.error


def test_directory_as_program(tmp_path):
    r = pardo.run([str(tmp_path)])
    assert r.status == "error"
    assert str(tmp_path) in r.error and "Permission denied" in r.error, r.error


def test_non_executable_file(tmp_path):
    f = tmp_path / "script.sh"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(0o644)
    r = pardo.run([str(f)])
    assert r.status == "error"
    assert str(f) in r.error and "Permission denied" in r.error, r.error


def test_bad_cwd(tmp_path):
    bad = tmp_path / "no" / "such" / "dir"
    r = pardo.run(["/bin/true"], cwd=str(bad))
    assert r.status == "error"
    assert str(bad) in r.error and "No such file" in r.error, r.error


def test_cwd_is_a_file(tmp_path):
    f = tmp_path / "plain"
    f.write_text("")
    r = pardo.run(["/bin/true"], cwd=f)
    assert r.status == "error"
    assert str(f) in r.error and "Not a directory" in r.error, r.error


@pytest.mark.parametrize("env", [{"A": 1}, {"A": None}, {1: "x"}, {"A": ["x"]}])
def test_env_with_non_string_values(env):
    with pytest.raises(TypeError):
        pardo.run(["/bin/true"], env=env)


@pytest.mark.parametrize("timeout", [-1, -0.001])
def test_negative_timeout(timeout):
    with pytest.raises(ValueError):
        pardo.run(["/bin/true"], timeout=timeout)


def test_huge_argv():
    r = pardo.run(["/bin/true"] + ["x" * 1000] * 3000)  # 3 MB > ARG_MAX (2 MiB here)
    assert r.status == "error"
    assert "Argument list too long" in r.error and "/bin/true" in r.error, r.error


@pytest.mark.parametrize("args", [[], ["/bin/echo", "a\0b"]])
def test_bad_argv_values(args):
    with pytest.raises(ValueError):
        pardo.run(args)


def test_bad_memory_limit():
    with pytest.raises(ValueError):
        pardo.run(["/bin/true"], memory_limit="plenty")


# --- exit status reported exactly ---------------------------------------------------


def test_foreign_sigkill_is_signaled_not_timeout():
    r = pardo.run(["sh", "-c", "kill -9 $$"], timeout=10)
    assert (r.status, r.signal, r.returncode) == ("signaled", 9, None), r


@pytest.mark.parametrize("code", [1, 2, 127, 255])
def test_exit_codes(code):
    r = pardo.run(["sh", "-c", f"exit {code}"])
    assert (r.status, r.returncode, r.signal) == ("failed", code, None)


# --- spawn, Task, ResultQueue, run_async ----------------------------------------------


def test_spawn_returns_at_once_and_wait_gives_the_result():
    t0 = time.monotonic()
    t = pardo.spawn(["sleep", "0.5"], tag="nap")
    assert time.monotonic() - t0 < 0.2
    assert not t.done() and t.result is None and t.tag == "nap"
    assert t.pid > 0 and os.path.exists(f"/proc/{t.pid}")
    r = t.wait()
    assert t.done() and t.result is r
    assert r.status == "ok" and r.pid == t.pid and r.duration >= 0.5
    assert abs(r.started_at - time.time()) < 5


def test_wait_timeout_raises_and_task_goes_on_then_kill(zoo):
    token = zoo.token()
    t = pardo.spawn(zoo.argv("tree", token), env=zoo.env(token))
    with pytest.raises(TimeoutError):
        t.wait(timeout=0.2)
    assert not t.done()
    t0 = time.monotonic()
    t.kill()
    r = t.wait(timeout=5)
    assert r.status == "cancelled" and time.monotonic() - t0 < 1.0
    assert audit.survivors(token) == []


def test_terminate_waits_kill_grace_for_a_term_ignorer(zoo):
    token = zoo.token()
    t = pardo.spawn(zoo.argv("termignore", token), env=zoo.env(token), kill_grace=0.4)
    _wait_for_procs(token, 5)
    t0 = time.monotonic()
    t.terminate()
    r = t.wait(timeout=5)
    took = time.monotonic() - t0
    assert r.status == "cancelled"
    assert 0.35 <= took < 1.4, f"SIGKILL came {took:.3f} s after terminate(), grace 0.4 s"
    assert audit.survivors(token) == []


def test_terminate_lets_a_graceful_task_finish_early(zoo):
    token = zoo.token()
    t = pardo.spawn(zoo.argv("graceful", token), env=zoo.env(token), kill_grace=10)
    _wait_for_procs(token, 1)
    t0 = time.monotonic()
    t.terminate()
    r = t.wait(timeout=15)
    assert r.status == "cancelled" and b"got TERM" in r.stdout
    assert time.monotonic() - t0 < 1.0


def test_kill_after_finish_changes_nothing():
    t = pardo.spawn(["/bin/true"])
    r = t.wait()
    t.kill()
    t.terminate()
    assert t.wait() is r and r.status == "ok"


def test_many_in_flight_exact_returncodes():
    tasks = [pardo.spawn(["sh", "-c", f"exit {i % 5}"], tag=i) for i in range(100)]
    for t in tasks:
        r = t.wait(timeout=60)
        assert r.returncode == t.tag % 5, (t.tag, r)


def test_result_queue_delivers_every_task():
    q = pardo.ResultQueue()
    tasks = [pardo.spawn(["sleep", f"0.{i % 3}"], queue=q, tag=i) for i in range(20)]
    assert 0 < len(q) <= 20
    got = []
    while len(got) < 20:
        got += q.get_many(max_items=7, timeout=10)
    assert sorted(t.tag for t in got) == list(range(20))
    assert all(t.done() and t.result.status == "ok" for t in got)
    assert {id(t) for t in got} == {id(t) for t in tasks}
    assert len(q) == 0
    slow = pardo.spawn(["sleep", "5"], queue=q)
    with pytest.raises(TimeoutError):
        q.get(timeout=0.05)
    assert q.get_many(timeout=0.05) == []
    slow.kill()
    assert q.get(timeout=5) is slow and slow.result.status == "cancelled"
    with pytest.raises(RuntimeError):  # nothing in flight: waiting would never end
        q.get()


def test_dropped_queue_with_undelivered_tasks_frees_its_fd():
    """A ResultQueue dropped while finished tasks still sit in it must not keep its
    descriptor (or the tasks) alive; no_leaks checks the fd."""
    import gc

    q = pardo.ResultQueue()
    t = pardo.spawn(["sh", "-c", "echo done > /dev/null"], queue=q)
    end = time.monotonic() + 10
    while not t.done() and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.1)  # finished by now in any case: it is in the queue, undelivered
    del q, t
    gc.collect()


def test_result_queue_fileno_with_selectors():
    import selectors

    q = pardo.ResultQueue()
    with selectors.DefaultSelector() as sel:
        sel.register(q.fileno(), selectors.EVENT_READ)
        assert sel.select(timeout=0.05) == []
        t = pardo.spawn(["sleep", "0.2"], queue=q)
        assert sel.select(timeout=5), "queue fd never became readable"
        assert q.get(timeout=0) is t and t.result.ok


def test_run_async_many_without_a_thread_per_task():
    import asyncio

    async def main():
        before = threading.active_count()
        coros = [pardo.run_async(["sleep", "0.3"]) for _ in range(20)]
        task = asyncio.gather(*coros)
        await asyncio.sleep(0.1)
        during = threading.active_count()
        return before, during, await task

    t0 = time.monotonic()
    before, during, results = asyncio.run(main())
    assert all(r.status == "ok" for r in results)
    assert time.monotonic() - t0 < 2.0
    assert during - before <= 2, f"{during - before} threads for 20 tasks"


def test_run_async_timeout_is_a_result():
    import asyncio

    r = asyncio.run(pardo.run_async(["sleep", "30"], timeout=0.2))
    assert r.status == "timeout" and r.duration < 1.5


def test_run_async_cancelled_kills_the_tree(zoo):
    """An awaiting coroutine that is cancelled must not leave its task running."""
    import asyncio

    token = zoo.token()

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pardo.run_async(zoo.argv("tree", token), env=zoo.env(token)), 0.3)

    asyncio.run(main())
    assert audit.survivors(token, settle=2.0) == []


# --- streams, input, placement, limits ------------------------------------------------


def test_stdout_to_path_and_file_object(tmp_path):
    path = tmp_path / "out.txt"
    r = pardo.run(["sh", "-c", "echo to-path; echo err >&2"], stdout=str(path))
    assert r.ok and r.stdout == b"" and r.stderr == b"err\n"
    assert path.read_bytes() == b"to-path\n"
    with open(tmp_path / "obj.txt", "wb") as f:
        r = pardo.run(["echo", "to-object"], stdout=f)
    assert r.ok and (tmp_path / "obj.txt").read_bytes() == b"to-object\n"


def test_stderr_merged_and_devnull():
    r = pardo.run(["sh", "-c", "echo a; echo b >&2; echo c"], stderr=pardo.STDOUT)
    assert r.stdout == b"a\nb\nc\n" and r.stderr == b""
    r = pardo.run(["sh", "-c", "echo a; echo b >&2"], stdout=pardo.DEVNULL, stderr=pardo.DEVNULL)
    assert r.ok and r.stdout == b"" and r.stderr == b""


def test_input_bytes_str_and_large():
    assert pardo.run(["cat"], input=b"\x00\xffab").stdout == b"\x00\xffab"
    assert pardo.run(["cat"], input="héllo").stdout == "héllo".encode()
    big = os.urandom(1 << 20) * 4  # 4 MiB in and out at once: no pipe deadlock
    r = pardo.run(["cat"], input=big, timeout=30)
    assert r.ok and r.stdout == big
    assert pardo.run(["cat"]).stdout == b""  # stdin is /dev/null by default


def test_env_cwd_shell_and_bytes_args(tmp_path):
    assert pardo.run(["/usr/bin/env"], env={"PZ": "1"}).stdout == b"PZ=1\n"
    assert pardo.run(["pwd"], cwd=tmp_path).stdout.decode().strip() == str(tmp_path)
    assert pardo.run("echo $((6*7))", shell=True).stdout == b"42\n"
    assert pardo.run([b"/bin/echo", b"\xff"]).stdout == b"\xff\n"


@pytest.mark.parametrize("cpu", sorted(os.sched_getaffinity(0))[:2])
def test_cpus_pins_the_task(cpu):
    r = pardo.run(["grep", "Cpus_allowed_list", "/proc/self/status"], cpus=[cpu])
    assert r.stdout.split()[-1] == str(cpu).encode(), r.stdout


def test_nice_lowers_priority():
    r = pardo.run(["nice"], nice=5)
    assert int(r.stdout) == min(19, os.nice(0) + 5), r.stdout


def test_memory_limit_stops_a_big_allocation(zoo):
    token = zoo.token()
    big = pardo.run(zoo.argv("alloc", token, 256), env=zoo.env(token), memory_limit="64M")
    assert big.status in ("failed", "signaled"), big
    small = pardo.run(zoo.argv("alloc", token, 8), env=zoo.env(token), memory_limit=64 << 20)
    assert small.ok, small


def test_result_accounts_cpu_and_memory(zoo):
    token = zoo.token()
    r = pardo.run(zoo.argv("alloc", token, 64), env=zoo.env(token))
    assert r.ok and r.max_rss >= 60 << 20, r.max_rss
    r = pardo.run(["sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"], timeout=30)
    assert r.ok and r.cpu_user + r.cpu_sys > 0.05, (r.cpu_user, r.cpu_sys)


def test_linger_waits_for_the_tree_default_kills_it(zoo):
    token = zoo.token()
    r = pardo.run(zoo.argv("lingerer", token), env=zoo.env(token), linger=True, timeout=10)
    assert r.ok and r.stdout == b"leader\nlate\n" and r.duration >= 0.45, r
    token = zoo.token()
    r = pardo.run(zoo.argv("lingerer", token), env=zoo.env(token), timeout=10)
    assert r.ok and r.stdout == b"leader\n" and r.duration < 0.45, r
    assert audit.survivors(token) == []


def test_pass_fds_caller_may_close_its_copy():
    rfd, wfd = os.pipe()
    try:
        t = pardo.spawn(["sh", "-c", "echo via3 >&3"], pass_fds={3: wfd})
        os.close(wfd)
        wfd = -1
        data = b""
        while chunk := os.read(rfd, 100):
            data += chunk
        assert data == b"via3\n"
        assert t.wait(timeout=10).ok
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


def _wait_for_procs(token, n, limit=5.0):
    end = time.monotonic() + limit
    while len(audit.token_processes(token)) < n:
        assert time.monotonic() < end, f"fewer than {n} processes with {token}"
        time.sleep(0.01)


FD_EXHAUSTION_SCRIPT = r"""
import resource, sys, pardo
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
tasks = [pardo.spawn(["sh", "-c", "sleep 0.3; echo out"], input=b"in", timeout=30)
         for _ in range(20)]
ok = err = 0
for t in tasks:
    r = t.wait(timeout=30)
    if r.ok and r.stdout == b"out\n":
        ok += 1
    elif r.status.value == "error" and "Too many open files" in (r.error or ""):
        err += 1
    else:
        print("WRONG", r, file=sys.stderr)
        sys.exit(1)
print(ok, err)
"""


@pytest.mark.parametrize("rung", ["cgroup", "pgroup"])
def test_running_out_of_fds_fails_tasks_and_loses_no_output(rung):
    """With no fd left for a task's pipes, the task fails with a reason; it must never run
    with its input replaced by /dev/null or its output thrown away. A task takes several
    fds, so the limit is stepped through a whole cycle of them: the run where one fd is
    left for a pipe that needs two must fail the task too."""
    for limit in range(40, 48):
        p = subprocess.run([sys.executable, "-c", FD_EXHAUSTION_SCRIPT, str(limit)],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PARDO_ISOLATION": rung})
        assert p.returncode == 0, (limit, p.stderr)
        ok, err = map(int, p.stdout.split())
        assert ok >= 1 and err >= 1, (limit, ok, err)
