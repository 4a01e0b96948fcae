"""Starting tasks: what a task's pid means, kills that come before the exec, and the
supervisor's own wake-ups per task.

The cgroup rung starts a child without waiting for its exec (clone3 puts it into its leaf,
so cgroup.kill reaches it from its first instruction): the supervisor thread goes on at
once while the child, sharing its memory, prepares and execs on a stack of its own. So a
task's pid exists before it is known whether the program started; these tests hold every
rung to the same answers."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

# tests/zoo is on sys.path (conftest.py puts it there)
import audit
from support import cgroup2_writable, python_script

# "-nobody": the same rung for an unprivileged user (setpriv to user nobody).
RUNGS = ["cgroup", "shepherd", "pgroup", "shepherd-nobody", "pgroup-nobody"]


def _run_script(script, args, rung, request, zoo, timeout):
    """Run ``script`` in a fresh Python with the rung forced, as nobody for "-nobody"."""
    if rung == "cgroup" and not cgroup2_writable():
        pytest.skip("no writable cgroup2 here (not root, or read-only cgroupfs)")
    base = rung.removesuffix("-nobody")
    argv, env = python_script(script, args, nobody=base != rung, request=request, zoo=zoo)
    env["PARDO_ISOLATION"] = base
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=zoo.dir,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr
    return p.stdout

PID_SCRIPT = textwrap.dedent("""
    import json, os, sys, time, pardo
    out = {"rung": str(pardo.isolation())}
    for name, kw in [("missing", dict(args=["/nonexistent/prog"])),
                     ("directory", dict(args=["/tmp"])),
                     ("bad_cwd", dict(args=["true"], cwd="/nonexistent/dir")),
                     ("bad_cpu", dict(args=["true"], cpus=[100000]))]:
        t = pardo.spawn(**kw)
        r = t.wait(timeout=30)
        out[name] = [t.pid, r.status.value, r.pid, r.returncode, r.error]
    # A long task with nothing else going on: its pid comes at once, and is the program's.
    t0 = time.monotonic()
    t = pardo.spawn(["sleep", "30"], timeout=60)
    pid = t.pid
    waited = time.monotonic() - t0
    exe = ""
    for _ in range(200):  # the exec may still be on its way to /proc's view of it
        exe = os.readlink(f"/proc/{pid}/exe")
        if exe.endswith("/sleep"):
            break
        time.sleep(0.005)
    t.kill()
    r = t.wait(timeout=30)
    out["long"] = [waited, exe, r.status.value, r.pid == pid]
    print(json.dumps(out))
""")


@pytest.mark.parametrize("rung", RUNGS)
def test_pid_is_known_once_the_program_started(rung, request, zoo):
    """Task.pid is None for a task whose program never started, whatever failed (exec,
    chdir, CPU pinning), and is the program's own pid otherwise -- returned at once for a
    long task, with no other event to wake the supervisor."""
    out = json.loads(_run_script(PID_SCRIPT, [], rung, request, zoo, timeout=120))
    assert out["rung"] == rung.removesuffix("-nobody")
    for name, needle in [("missing", "No such file or directory: '/nonexistent/prog'"),
                         ("directory", "it is a directory"),
                         ("bad_cwd", "cannot change to directory '/nonexistent/dir'"),
                         ("bad_cpu", "cannot pin to the requested CPUs")]:
        pid, status, result_pid, code, error = out[name]
        assert pid is None and result_pid is None, (name, out[name])
        assert status == "error" and code is None and needle in error, (name, out[name])
    waited, exe, status, same_pid = out["long"]
    assert waited < 2.0, f"Task.pid took {waited:.2f} s"
    assert exe.endswith("/sleep"), exe
    assert status == "cancelled" and same_pid


KILL_SCRIPT = textwrap.dedent("""
    import sys, pardo
    zoo, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    env = {"PARDO_ZOO_TOKEN": token, "PATH": "/usr/bin:/bin"}
    q = pardo.ResultQueue()
    for i in range(n):
        if i % 2 == 0:
            t = pardo.spawn([zoo, "tree", token], env=env, queue=q, timeout=60)
            t.kill()  # most often before the child has reached its exec
        else:
            pardo.spawn([zoo, "tree", token], env=env, queue=q, timeout=0.3)
            pardo.spawn(["/nonexistent/prog"], queue=q)  # failures among them
    got = []
    while len(got) < n + n // 2:
        got += q.get_many(timeout=60)
    print(" ".join(sorted(t.result.status.value for t in got)))
""")


@pytest.mark.parametrize("rung", RUNGS)
def test_kills_right_after_spawn_leave_nothing(zoo, rung, request):
    """Trees killed the moment spawn() returns -- mostly before their exec -- are
    cancelled; neither they nor their neighbours (trees ended by a short deadline) leave
    a process behind; start failures in between are reported as such."""
    token = zoo.token()
    n = 60
    statuses = _run_script(KILL_SCRIPT, [str(zoo.bin), token, str(n)], rung, request, zoo,
                           timeout=180).split()
    assert statuses.count("error") == n // 2, statuses
    assert statuses.count("cancelled") == n // 2, statuses
    assert statuses.count("timeout") == n // 2, statuses
    assert audit.survivors(token) == []


SWITCH_SCRIPT = textwrap.dedent("""
    import os, pardo
    def supervisor_switches():
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "pardo-supervise":
                    continue
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        return int(line.split()[1])
        raise SystemExit("no supervisor thread")
    n = 400
    pardo.run(["true"])
    q = pardo.ResultQueue(max_running=2)
    tasks = [pardo.spawn(["/bin/true"], timeout=60, queue=q) for _ in range(n)]
    before = supervisor_switches()
    got = q.get_many(max_items=n, min_items=n, timeout=60)
    after = supervisor_switches()
    assert len(got) == n and all(t.result.ok for t in tasks)
    print(str(pardo.isolation()), (after - before) / n)
""")


def test_supervisor_sleeps_about_once_per_task():
    """With the cgroup rung the supervisor thread sleeps once per task (waiting for the
    next exit): not for each child's exec, and not when a new child drops its copies of
    the pipes of a task that just ended (that woke it two or three times per task)."""
    if not cgroup2_writable():
        pytest.skip("no writable cgroup2 here (not root, or read-only cgroupfs)")
    p = subprocess.run([sys.executable, "-c", SWITCH_SCRIPT], capture_output=True, text=True,
                       env={**os.environ, "PARDO_ISOLATION": "cgroup"}, timeout=120)
    assert p.returncode == 0, p.stderr
    rung, per_task = p.stdout.split()
    assert rung == "cgroup"
    assert float(per_task) < 1.4, f"the supervisor thread slept {per_task} times per task"


CWD_SCRIPT = textwrap.dedent("""
    import json, os, sys, pardo
    first = pardo.run(["pwd"], timeout=30)  # the launcher (where there is one) starts here
    os.chdir(sys.argv[1])
    moved = pardo.run(["pwd"], timeout=30)
    own = pardo.run(["pwd"], cwd="/", timeout=30)
    print(json.dumps([r.stdout.decode().strip() for r in (first, moved, own)]))
""")


@pytest.mark.parametrize("rung", RUNGS)
def test_tasks_start_in_the_callers_directory_of_the_moment(rung, request, zoo):
    """A task without cwd= runs where the caller is when it starts it, even after an
    os.chdir(): not where pardo's launcher was started (it has a directory of its own)."""
    there = tempfile.mkdtemp(prefix="there-", dir=zoo.dir)  # where user nobody may go too
    try:
        os.chmod(there, 0o755)
        out = json.loads(_run_script(CWD_SCRIPT, [there], rung, request, zoo, timeout=60))
        assert out == [os.path.realpath(zoo.dir), os.path.realpath(there), "/"], out
    finally:
        os.rmdir(there)
