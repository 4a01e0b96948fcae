"""The zoo matrix: every adversary x {idle, all cores busy} x {cgroup, shepherd,
shepherd as user nobody}, each audited for status, wall time, survivors, zombies and
leaked fds; plus a negative control proving the survivor detector fires.

A rung is chosen when a process's supervisor starts, so each (rung, load) pair runs all
adversaries in one driver process (tests/zoo/driver.py), which audits each case from
inside; this side checks the driver's findings and sweeps /proc once more as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# tests/zoo is on sys.path (conftest.py puts it there)
import audit
import driver
from support import (
    SYSTEM_PYTHON,
    DriverHung,
    as_nobody_argv,
    cgroup2_writable,
    cpu_load,
    nobody_env,
    run_zoo_driver,
)

RUNGS = ["cgroup", "shepherd", "shepherd-nobody"]
LOADS = ["idle", "loaded"]
ADVERSARIES = driver.CASES
DRIVER_TIMEOUT = 150  # seconds; a driver normally takes well under 20


class Matrix:
    """Runs one driver per (rung, load) on first demand and keeps its report."""

    def __init__(self, zoo, request):
        self.zoo = zoo
        self.reports = {}
        self._request = request

    def report(self, rung, load):
        key = (rung, load)
        if key not in self.reports:
            self.reports[key] = self._run(rung, load)
        return self.reports[key]

    def driver_command(self, rung, load, only=(), keep_survivors=False):
        """(argv, env, cwd) running the driver for ``rung``."""
        args = [str(self.zoo.dir / "driver.py"), "--zoo", str(self.zoo.bin), "--load", load]
        if only:
            args += ["--only", ",".join(only)]
        if keep_survivors:
            args.append("--keep-survivors")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARDO_")}
        if rung == "shepherd-nobody":
            # Not forced: the unprivileged process must pick the shepherd rung by itself.
            env = nobody_env(self._request.getfixturevalue("nobody_pythonpath"), self.zoo.dir)
            return as_nobody_argv([SYSTEM_PYTHON, *args]), env, self.zoo.dir
        env["PARDO_ISOLATION"] = rung
        return [sys.executable, *args], env, None

    def run_driver(self, argv, env, cwd):
        try:
            rc, out, err = run_zoo_driver(argv, env, cwd, DRIVER_TIMEOUT)
        except DriverHung as e:
            pytest.fail(f"zoo driver hung for {DRIVER_TIMEOUT} s: {argv}\n{e}")
        if rc != 0:
            pytest.fail(f"zoo driver exited {rc}: {argv}\n{err.decode()[-3000:]}")
        return json.loads(out)

    def _run(self, rung, load):
        argv, env, cwd = self.driver_command(rung, load)
        if load == "loaded":
            with cpu_load(self.zoo):
                rep = self.run_driver(argv, env, cwd)
        else:
            rep = self.run_driver(argv, env, cwd)
        # As root, look again for anything carrying a case's token (the unprivileged
        # driver cannot see processes of other users), and clean up what we find.
        for case in rep["cases"].values():
            late = [p for t in case["tokens"] for p in audit.survivors(t, settle=0)]
            audit.kill_all(late)
            case["late_survivors"] = late
        return rep


@pytest.fixture(scope="session")
def matrix(zoo, request):
    return Matrix(zoo, request)


def _require_rung(rep, rung):
    """Fail if the rung is missing on a machine that ought to have it; else skip loudly."""
    if "unavailable" not in rep:
        return
    why = cgroup2_writable() if rung == "cgroup" else "the shepherd rung needs no privileges"
    if why:
        pytest.fail(f"pardo reports rung {rung!r} unavailable, but this machine ought to have "
                    f"it ({why}): {rep['unavailable']}")
    pytest.skip(f"rung {rung!r} not available here, as pardo reports: {rep['unavailable']}")


CASES = [
    pytest.param(rung, load, adv, id=f"{rung}-{load}-{adv}")
    for rung in RUNGS for load in LOADS for adv in ADVERSARIES
]


@pytest.mark.parametrize("rung,load,adv", CASES)
def test_adversary(matrix, rung, load, adv):
    rep = matrix.report(rung, load)
    _require_rung(rep, rung)
    case = rep["cases"][adv]
    assert not case["late_survivors"], f"survivors seen as root: {case['late_survivors']}"
    assert not case["problems"], "\n".join(
        [f"{adv} under {rung}/{load} (isolation {rep['isolation']}):", *case["problems"],
         f"record: {json.dumps({k: v for k, v in case.items() if k != 'problems'})[:1500]}"])


@pytest.mark.parametrize("rung", RUNGS)
def test_rung_in_force(matrix, rung):
    """The driver ran under the rung asked for; the unprivileged one as nobody, where
    pardo must choose the shepherd by itself."""
    rep = matrix.report(rung, "idle")
    _require_rung(rep, rung)
    assert rep["isolation"] == rung.split("-")[0]
    assert rep["uid"] == (65534 if rung.endswith("nobody") else os.getuid())


def test_detector_finds_a_detached_process(zoo):
    """The detector itself: a zoo tree started without pardo, in its own session, is found
    by its token (leader and escaped child), and is gone once we kill it."""
    token = zoo.token()
    p = subprocess.Popen(zoo.argv("setsid", token), env=zoo.env(token),
                         stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline() == b"escaped\n"
        found = audit.token_processes(token)
        assert {f["pid"] for f in found} >= {p.pid} and len(found) == 2, found
        assert all("cmdline" in f["where"] and "environ" in f["where"] for f in found)
    finally:
        audit.kill_all(audit.token_processes(token))
        p.wait()
    assert audit.survivors(token) == []


def test_negative_control_pgroup_misses_double_fork_daemon(matrix, zoo):
    """With isolation deliberately weakened to the process group, a double-fork daemon
    (new session, parent gone) escapes: the audit must see it. Proves that the clean
    results above are not the detector's blindness."""
    argv, env, cwd = matrix.driver_command("pgroup", "idle", only=["daemon"], keep_survivors=True)
    rep = matrix.run_driver(argv, env, cwd)
    assert rep["isolation"] == "pgroup"
    case = rep["cases"]["daemon"]
    try:
        assert case["survivors"], f"the driver's audit missed the escaped daemon: {case}"
        ours = audit.token_processes(case["token"])
        assert ours, "the root-side scan missed the escaped daemon"
        assert {s["pid"] for s in case["survivors"]} == {s["pid"] for s in ours}
    finally:
        audit.kill_all(audit.token_processes(case["token"]))
    assert audit.survivors(case["token"]) == []
