"""SIGKILL of ``pardo run`` mid-run leaves no task process behind, on every rung."""

import os
import secrets
import subprocess

import pytest

import audit
from pardo_cli import pardo_cmd


def _available(rung):
    env = dict(os.environ, PARDO_ISOLATION=rung)
    p = subprocess.run(pardo_cmd()[:-1] + ["doctor"], env=env, capture_output=True, text=True,
                       timeout=60)
    return p.returncode == 0 and p.stdout.startswith(f"isolation: {rung}")


@pytest.mark.parametrize("rung", ["cgroup", "shepherd", "pgroup"])
def test_sigkill_of_pardo_leaves_no_task_process(rung):
    if not _available(rung):
        pytest.skip(f"the {rung} rung is not available here (pardo doctor says why)")
    token = f"pardo-sigkill-{rung}-{secrets.token_hex(4)}"
    env = dict(os.environ, PARDO_ISOLATION=rung, PARDO_ZOO_TOKEN=token)
    # Each task is a shell with two grandchildren: the leader alone is not the tree.
    p = subprocess.Popen(pardo_cmd() + ["-j3", "sh -c 'sleep 60 & sleep 61 & wait' {}",
                                        ":::", "1", "2", "3", "4"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        audit.wait_for_token_processes(token, 6, limit=20, comm="sleep",
                                       what="the tasks did not start")
        p.kill()
        p.wait(timeout=10)
        left = audit.survivors(token, settle=5.0)
        assert left == [], left
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        audit.kill_all(audit.token_processes(token))



def test_doctor_says_pgroup_has_a_guardian():
    env = dict(os.environ, PARDO_ISOLATION="pgroup")
    p = subprocess.run(pardo_cmd()[:-1] + ["doctor"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert "if pardo itself is SIGKILLed, a guardian process kills every task's group" \
        in p.stdout
