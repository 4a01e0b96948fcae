"""pardo's launcher (pardo-shepherd --launcher): one per supervisor, it forks the
shepherd rung's keepers. Its death must not lose tasks silently: the tasks in flight fail
with the reason, their trees die (setsid escapees included), and the next task gets a new
launcher."""

import json
import secrets
import subprocess
import textwrap

import pytest

# tests/zoo is on sys.path (conftest.py puts it there)
import audit
from support import python_script

# Both scripts: our children that are pardo's launcher (pardo-shepherd --launcher).
PROLOGUE = textwrap.dedent("""
    import json, os, signal, sys, time, pardo

    def launchers():
        me = os.getpid()
        found = []
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as f:
                for pid in f.read().split():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as g:
                            if b"--launcher" in g.read():
                                found.append(int(pid))
                    except OSError:
                        pass
        return found
""")

SCRIPT = PROLOGUE + textwrap.dedent("""

    token = os.environ["PARDO_ZOO_TOKEN"]
    first = pardo.run(["true"], timeout=30)
    # Each task: a shell with a plain grandchild and one that left for a session of its own.
    tasks = [pardo.spawn(["sh", "-c", "setsid sleep 60 & sleep 61 & wait", token], timeout=60)
             for _ in range(3)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sleeps = 0
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        env = f.read()
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    continue
                sleeps += token.encode() in env and comm == "sleep"
        if sleeps >= 6:
            break
        time.sleep(0.02)
    before = launchers()
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    results = [t.wait(timeout=30) for t in tasks]
    waited = time.monotonic() - t0
    again = pardo.run(["echo", "again"], timeout=30)
    print(json.dumps({
        "rung": str(pardo.isolation()), "first": first.status.value, "sleeps": sleeps,
        "before": before, "after": launchers(), "waited": waited,
        "results": [[r.status.value, r.error, r.note] for r in results],
        "again": [again.status.value, again.stdout.decode()],
    }))
""")


# "-nobody": the same rung for an unprivileged user (setpriv to user nobody).
@pytest.mark.parametrize("rung", ["shepherd", "shepherd-nobody"])
def test_killing_the_launcher_fails_its_tasks_and_a_new_one_takes_over(rung, request, zoo):
    token = f"pardo-launcher-{secrets.token_hex(4)}"
    base = rung.removesuffix("-nobody")
    argv, env = python_script(SCRIPT, nobody=base != rung, request=request, zoo=zoo)
    env.update(PARDO_ISOLATION=base, PARDO_ZOO_TOKEN=token)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=zoo.dir, timeout=120)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["rung"] == base and out["first"] == "ok"
        assert out["sleeps"] >= 6, out
        assert len(out["before"]) == 1, out  # one launcher, started by the first task
        for status, error, note in out["results"]:
            assert status == "error", out
            assert "launcher" in error, error
            assert f"pid {out['before'][0]}" in note and "killed by signal 9" in note, note
        assert out["waited"] < 10, out
        # The next task started a new launcher.
        assert out["again"] == ["ok", "again\n"], out
        assert len(out["after"]) == 1 and out["after"] != out["before"], out
        left = audit.survivors(token, settle=5.0)
        assert left == [], left
    finally:
        audit.kill_all(audit.token_processes(token))


DIRECT_SCRIPT = PROLOGUE + textwrap.dedent("""

    token = os.environ["PARDO_ZOO_TOKEN"]
    first = pardo.run(["true"], timeout=30)
    tasks = [pardo.spawn(["sh", "-c", "sleep 1; echo done", token], timeout=60)
             for _ in range(3)]
    pids = [t.pid for t in tasks]  # each task exists: the launcher has answered
    for pid in pids:  # and has exec'd (until then it runs the launcher's program)
        deadline = time.monotonic() + 10
        while (os.readlink(f"/proc/{pid}/exe").endswith("pardo-shepherd")
               and time.monotonic() < deadline):
            time.sleep(0.01)
    before = launchers()
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    results = [t.wait(timeout=30) for t in tasks]
    again = pardo.run(["echo", "again"], timeout=30)
    print(json.dumps({
        "rung": str(pardo.isolation()), "first": first.status.value, "pids": pids,
        "before": before, "after": launchers(),
        "results": [[r.status.value, r.stdout.decode(), r.error] for r in results],
        "again": [again.status.value, again.stdout.decode()],
    }))
""")


# "-nobody": the same rung for an unprivileged user (setpriv to user nobody).
@pytest.mark.parametrize("rung", ["cgroup", "pgroup", "pgroup-nobody"])
def test_cgroup_and_pgroup_tasks_outlive_their_launcher(rung, request, zoo):
    """The cgroup and pgroup rungs' tasks are the supervisor's own children (the launcher
    clones them with CLONE_PARENT): the launcher's death loses none of those it started --
    they run to their end and report -- and the next task gets a new launcher."""
    from support import cgroup2_writable

    if rung == "cgroup" and not cgroup2_writable():
        pytest.skip("no writable cgroup2 here (not root, or read-only cgroupfs)")
    token = f"pardo-launcher-{secrets.token_hex(4)}"
    base = rung.removesuffix("-nobody")
    argv, env = python_script(DIRECT_SCRIPT, nobody=base != rung, request=request, zoo=zoo)
    env.update(PARDO_ISOLATION=base, PARDO_ZOO_TOKEN=token)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=zoo.dir, timeout=120)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["rung"] == base and out["first"] == "ok"
        assert all(pid for pid in out["pids"]), out
        assert len(out["before"]) == 1, out
        assert out["results"] == [["ok", "done\n", None]] * 3, out
        assert out["again"] == ["ok", "again\n"], out
        assert len(out["after"]) == 1 and out["after"] != out["before"], out
        assert audit.survivors(token, settle=2.0) == []
    finally:
        audit.kill_all(audit.token_processes(token))
