"""The engine under faults: a GIL held in C, a supervisor killed with SIGKILL, Ctrl-C,
running out of descriptors.

Every test here checks that it leaves no fd, live child or zombie child behind in the
test process (conftest.py's leak check, on for every test).
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
from support import (
    SYSTEM_PYTHON,
    as_nobody_argv,
    cgroup2_writable,
    nobody_env,
    supervisor_owner,
    wait_for_processes,
)


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
        code = "import pardo; print(pardo.run(['true']).status)"
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=60)
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
        audit.wait_for_token_processes(token, 1 + 13)
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
