"""pardo where its users are: older kernels and Docker's default seccomp profile, emulated
by tests/engine/kernel_profile.c (a launcher that installs a seccomp filter answering as
that kernel does, then execs the program), as root and as user nobody.

Per profile and user: the filter itself answers as documented; tasks start; a caller's
inheritable fd 50 never reaches a task; the zoo's adversaries are all handled (one driver
run per profile and user, idle); no task process outlives a SIGKILLed supervisor; and
``pardo doctor`` tells the truth about each feature.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# tests/zoo is on sys.path (tests/conftest.py puts it there)
import audit
from support import (
    SYSTEM_PYTHON,
    DriverHung,
    as_nobody_argv,
    cgroup2_writable,
    nobody_env,
    run_zoo_driver,
    supervisor_owner,
    wait_for_processes,
)

HERE = Path(__file__).parent
PROFILES = ["4.18", "5.4", "5.10", "docker"]
USERS = ["root", "nobody"]
DRIVER_TIMEOUT = 200


def expected_rung(profile, user):
    """The rung pardo must choose by itself: the cgroup rung wherever root has a writable
    cgroup2 and the kernel has pidfds and cgroup.kill or cgroup.freeze (all but 4.18);
    elsewhere the shepherd."""
    if user == "nobody" or profile == "4.18" or not cgroup2_writable():
        return "shepherd"
    return "cgroup"


@pytest.fixture(scope="session")
def launcher(zoo):
    """The compiled launcher, in the zoo's world-readable directory (nobody runs it too)."""
    exe = zoo.dir / "kernel_profile"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe),
                    str(HERE / "kernel_profile.c")], check=True, capture_output=True)
    exe.chmod(0o755)
    return exe


class Under:
    """Builds command lines that run a Python program under a profile as a user."""

    def __init__(self, launcher, zoo, request):
        self.launcher, self.zoo, self.request = launcher, zoo, request

    def command(self, profile, user, pyargs, env=None):
        """(argv, env, cwd) for ``python PYARGS`` under ``profile`` as ``user``."""
        if user == "nobody":
            pp = self.request.getfixturevalue("nobody_pythonpath")
            e = {**nobody_env(pp, self.zoo.dir), **(env or {})}
            argv = as_nobody_argv([str(self.launcher), profile, SYSTEM_PYTHON, *pyargs])
            return argv, e, self.zoo.dir
        e = {k: v for k, v in os.environ.items() if not k.startswith("PARDO_")}
        e.update(env or {})
        return [str(self.launcher), profile, sys.executable, *pyargs], e, None

    def run(self, profile, user, pyargs, env=None, timeout=120):
        argv, e, cwd = self.command(profile, user, pyargs, env)
        return subprocess.run(argv, env=e, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def script(self, name, text):
        p = self.zoo.dir / name
        p.write_text(text)
        p.chmod(0o644)
        return p


@pytest.fixture
def under(launcher, zoo, request):
    return Under(launcher, zoo, request)


# ---------------------------------------------------------------- the launcher itself

PROBE = r"""
import ctypes, errno, json, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(*args):
    r = libc.syscall(*[ctypes.c_long(a) for a in args])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
def clone3(flags, size=88, cgroup=0, set_tid=0):
    # Arguments every kernel refuses before creating anything: a bad cgroup fd (EBADF),
    # a set_tid array without a size (EINVAL); E2BIG where the kernel knows neither field.
    buf = ctypes.create_string_buffer(
        struct.pack("11Q", flags, 0, 0, 0, 17, 0, 0, 0, set_tid, 0, cgroup))
    return call(435, ctypes.addressof(buf), size)
out = {}
out["clone3_size0"] = call(435, 0, 0)
out["clone3_into_bad_cgroup"] = clone3(1 << 33, cgroup=1 << 30)
out["clone3_set_tid"] = clone3(0, set_tid=8)
out["pidfd_open"] = call(434, os.getpid(), 0)
out["close_range_cloexec"] = call(436, 900, 901, 4)
out["close_range_plain"] = call(436, 900, 901, 0)
r, w = os.pipe()
try:
    os.preadv(r, [bytearray(1)], -1, os.RWF_NOWAIT)
    out["pipe_nowait"] = "ok"
except OSError as e:
    out["pipe_nowait"] = errno.errorcode[e.errno]
out["hide"] = os.environ.get("PARDO_TEST_HIDE", "")
print(json.dumps(out))
"""

# What each kernel answers (Python names EOPNOTSUPP by its alias ENOTSUP).
EXPECTED_SYSCALLS = {
    "4.18": dict(clone3_size0="ENOSYS", clone3_into_bad_cgroup="ENOSYS",
                 clone3_set_tid="ENOSYS", pidfd_open="ENOSYS",
                 close_range_cloexec="ENOSYS", close_range_plain="ENOSYS", pipe_nowait="ENOTSUP",
                 hide="cgroup.kill,cgroup.freeze"),
    "5.4": dict(clone3_size0="EINVAL", clone3_into_bad_cgroup="EINVAL",
                clone3_set_tid="E2BIG", pidfd_open="ok",
                close_range_cloexec="ENOSYS", close_range_plain="ENOSYS", pipe_nowait="ENOTSUP",
                hide="cgroup.kill"),
    "5.10": dict(clone3_size0="EINVAL", clone3_into_bad_cgroup="EBADF",
                 clone3_set_tid="EINVAL", pidfd_open="ok",
                 close_range_cloexec="EINVAL", close_range_plain="ok", pipe_nowait="EAGAIN",
                 hide="cgroup.kill"),
    "docker": dict(clone3_size0="ENOSYS", clone3_into_bad_cgroup="ENOSYS",
                   clone3_set_tid="ENOSYS", pidfd_open="ok",
                   close_range_cloexec="ok", close_range_plain="ok", pipe_nowait="EAGAIN", hide=""),
    "host": dict(clone3_size0="EINVAL", clone3_into_bad_cgroup="EBADF",
                 clone3_set_tid="EINVAL", pidfd_open="ok",
                 close_range_cloexec="ok", close_range_plain="ok", pipe_nowait="EAGAIN", hide=""),
}


@pytest.mark.parametrize("profile", [*PROFILES, "host"])
def test_filter_answers_as_the_kernel(under, profile):
    r = under.run(profile, "root", ["-c", PROBE])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == EXPECTED_SYSCALLS[profile]


def test_launcher_refuses_unknown_profile(launcher):
    r = subprocess.run([str(launcher), "4.19", "/bin/true"], capture_output=True, text=True)
    assert r.returncode == 125 and "unknown profile '4.19'" in r.stderr


# ---------------------------------------------------------------- tasks start, fds stay home

TASKS = r"""
import json, os, sys
import pardo
out = {"rung": pardo.isolation()}
r = pardo.run(["/bin/echo", "hi"], timeout=30)
out["echo"] = [r.status, r.stdout.decode(), r.error]
# An inheritable fd the caller holds: no task may see it.
fd = os.open("/dev/null", os.O_RDONLY)
os.dup2(fd, 50)
os.close(fd)
r = pardo.run(["/bin/ls", "/proc/self/fd"], timeout=30)
out["fds"] = sorted(r.stdout.decode().split(), key=int) if r.status == "ok" else [r.status, r.error]
r = pardo.run(["/nonexistent-program"], timeout=30)
out["missing"] = [r.status, r.error]
print(json.dumps(out))
"""


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("profile", PROFILES)
def test_tasks_start_and_see_only_their_fds(under, profile, user):
    r = under.run(profile, user, ["-c", TASKS])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["rung"] == expected_rung(profile, user), out
    assert out["echo"] == ["ok", "hi\n", None], out
    # ls's own directory fd is 3; fd 50 of the caller must not be there.
    assert out["fds"] == ["0", "1", "2", "3"], out
    assert out["missing"][0] == "error" and "No such file" in out["missing"][1], out


# ---------------------------------------------------------------- the zoo under each profile


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("profile", PROFILES)
def test_zoo_adversaries(under, zoo, profile, user):
    """Every zoo adversary (idle), isolation chosen by pardo itself, audited from inside
    the driver and swept again from here as root."""
    args = [str(zoo.dir / "driver.py"), "--zoo", str(zoo.bin), "--load", "idle"]
    argv, env, cwd = under.command(profile, user, args)
    try:
        rc, out, err = run_zoo_driver(argv, env, cwd, DRIVER_TIMEOUT)
    except DriverHung as e:
        pytest.fail(f"zoo driver hung under {profile} as {user}: {e}")
    assert rc == 0, err.decode()[-3000:]
    rep = json.loads(out)
    assert "unavailable" not in rep, rep
    assert rep["isolation"] == expected_rung(profile, user)
    problems = []
    for name, case in rep["cases"].items():
        late = [x for t in case["tokens"] for x in audit.survivors(t, settle=0)]
        audit.kill_all(late)
        if late:
            problems.append(f"{name}: survivors seen as root: {late}")
        problems += [f"{name}: {x}" for x in case["problems"]]
    assert not problems, (f"under {profile} as {user} (isolation {rep['isolation']}):\n"
                          + "\n".join(problems))


# ---------------------------------------------------------------- a SIGKILLed supervisor

OWNER = r"""
import sys, time
import pardo
zoo, token = sys.argv[1], sys.argv[2]
env = {"PARDO_ZOO_TOKEN": token, "PATH": "/usr/bin:/bin", "PARDO_ZOO_ALARM": "60"}
tasks = [pardo.spawn([zoo, mode, token], env=env, timeout=60)
         for mode in ("tree", "setsid", "daemon", "termignore", "forkstorm")]
print(pardo.isolation(), flush=True)
time.sleep(60)
"""
OWNER_TREES = 5


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("profile", PROFILES)
def test_supervisor_killed_leaves_no_survivors(under, zoo, profile, user):
    token = zoo.token()
    script = under.script(f"owner-{token}.py", OWNER)
    argv, env, cwd = under.command(profile, user, [str(script), str(zoo.bin), token])
    with supervisor_owner(argv, env, cwd, script, token) as (p, line):
        assert line, p.stderr.read1(4000)
        assert len(wait_for_processes(token, OWNER_TREES)) >= OWNER_TREES, "trees did not form"
        p.kill()
        p.wait()
        left = audit.survivors(token, settle=2.0)
        assert left == [], f"{len(left)} task process(es) outlived the SIGKILLed supervisor " \
                           f"under {profile} as {user} ({line[0].decode()}): {left[:8]}"


# ---------------------------------------------------------------- rungs this kernel cannot give

REFUSAL = r"""
import pardo, sys
try:
    pardo.run(["/bin/true"])
except pardo.IsolationUnavailable as e:
    print(e)
else:
    print("ran under", pardo.isolation())
"""


@pytest.mark.parametrize("rung", ["cgroup", "pgroup"])
def test_rungs_needing_pidfds_refused_on_4_18(under, rung):
    """On 4.18 the cgroup and pgroup rungs cannot learn of a task's exit: asked for, they
    are refused in one line that names the missing feature and the kernel that has it."""
    r = under.run("4.18", "root", ["-c", REFUSAL], env={"PARDO_ISOLATION": rung})
    assert r.returncode == 0, r.stderr[-2000:]
    line = r.stdout.strip()
    assert "\n" not in line and "no pidfds" in line and "Linux 5.3" in line, line


def test_cgroup_rung_refused_without_kill_or_freeze(under):
    """A cgroup v2 kernel older than 5.2 (neither cgroup.kill nor cgroup.freeze): the
    cgroup rung says what it lacks, and auto falls back to the shepherd."""
    if not cgroup2_writable():
        pytest.skip("no writable cgroup2 here: the cgroup rung is refused for that already")
    argv, env, _ = under.command("host", "root", ["-c", REFUSAL])
    argv.insert(2, "--hide=cgroup.kill,cgroup.freeze")
    r = subprocess.run(argv, env={**env, "PARDO_ISOLATION": "cgroup"}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "neither cgroup.kill (Linux 5.14) nor cgroup.freeze (5.2)" in r.stdout, r.stdout
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "ran under shepherd", r.stdout + r.stderr[-2000:]


# ---------------------------------------------------------------- doctor tells the truth

# Feature lines doctor must print per profile (the start of each value).
DOCTOR_FEATURES = {
    "4.18": {"clone3": "no", "clone3 CLONE_INTO_CGROUP": "no", "pidfd": "no", "close_range": "no",
             "close_range CLOSE_RANGE_CLOEXEC": "no", "cgroup.kill": "no", "cgroup.freeze": "no"},
    "5.4": {"clone3": "yes", "clone3 CLONE_INTO_CGROUP": "no", "pidfd": "yes", "close_range": "no",
            "close_range CLOSE_RANGE_CLOEXEC": "no", "cgroup.kill": "no", "cgroup.freeze": "yes"},
    "5.10": {"clone3": "yes", "clone3 CLONE_INTO_CGROUP": "yes", "pidfd": "yes",
             "close_range": "yes", "close_range CLOSE_RANGE_CLOEXEC": "no", "cgroup.kill": "no",
             "cgroup.freeze": "yes"},
    "docker": {"clone3": "no", "clone3 CLONE_INTO_CGROUP": "no", "pidfd": "yes",
               "close_range": "yes", "close_range CLOSE_RANGE_CLOEXEC": "yes", "cgroup.kill": "yes",
               "cgroup.freeze": "yes"},
}


def _doctor(under, profile, user, *hide):
    argv, env, cwd = under.command(profile, user, ["-m", "pardo", "doctor"])
    k = argv.index(str(under.launcher)) + 2
    argv[k:k] = [f"--hide={h}" for h in hide]
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("profile", PROFILES)
def test_doctor_lines(under, profile, user):
    text = _doctor(under, profile, user)
    lines = text.splitlines()
    assert lines[0] == f"isolation: {expected_rung(profile, user)}", text
    assert "tasks: can start" in lines, text
    got = dict(line.strip().split(": ", 1) for line in lines
               if line.startswith("  ") and ": " in line)
    for feature, answer in DOCTOR_FEATURES[profile].items():
        found = got.get(feature, "")
        if user == "nobody" and found.startswith("unknown (no cgroup below the root"):
            continue  # true: in the root cgroup, nobody may make none to look in
        assert found.startswith(answer), (feature, text)
    if not DOCTOR_FEATURES[profile]["pidfd"] == "yes":
        # Delegation cannot give the cgroup rung without pidfds: no advice to try it.
        assert "systemd-run" not in text and "no pidfds" in text and "Linux 5.3" in text, text
    if profile in ("4.18", "5.4"):
        assert "walking /proc/self/fd" in text, text
    if profile in ("5.4", "5.10"):
        assert "by freezing it" in text, text


@pytest.mark.parametrize("profile,advice", [("4.18", False), ("5.10", True)])
def test_doctor_on_cgroup_v1_host(under, profile, advice):
    """A cgroup v1 host (RHEL 8's default): the shepherd rung, the reason, and advice to
    boot into cgroup v2 only where the kernel could then give the cgroup rung."""
    text = _doctor(under, profile, "root", "cgroup2")
    assert text.splitlines()[0] == "isolation: shepherd", text
    assert "cgroup not used: no cgroup2 filesystem is mounted (a cgroup v1 host" in text, text
    assert ("systemd.unified_cgroup_hierarchy=1" in text) == advice, text
    assert "systemd-run" not in text, text


def test_doctor_when_no_task_can_start(under):
    text = _doctor(under, "noproc", "root")
    assert "tasks: NONE CAN START here: clone failed: Operation not permitted" in text, text


def test_run_stops_at_first_task_when_none_can_start(under, zoo):
    """Every input would fail alike: `pardo run` says so once and stops, exit 255."""
    argv, env, _ = under.command("noproc", "root", ["-m", "pardo", "run", "-j", "2", "echo", ":::",
                                                   *map(str, range(50))])
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=zoo.dir)
    assert r.returncode == 255, (r.returncode, r.stderr)
    assert r.stderr.count("clone failed: Operation not permitted") == 1, r.stderr
    assert "no task can start on this host" in r.stderr, r.stderr
    assert r.stdout == ""


def test_run_goes_on_past_a_missing_program(under, zoo):
    """A task's own failure to start (its program is missing) does not stop the run."""
    argv, env, _ = under.command("host", "root", ["-m", "pardo", "run", "{}", ":::",
                                                 "nonexistent-x", "/bin/true"])
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=zoo.dir)
    assert r.returncode == 1 and "no task can start" not in r.stderr, r.stderr
