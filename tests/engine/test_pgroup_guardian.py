"""The pgroup rung's guardian (pardo-shepherd --guardian-pgroups) is told of every task's
group twice, as it is made and as it is done with, and acts on what it was told only once
the supervisor is gone. So it reads those records in batches, not each as it comes: a
wake-up of another process per record cost each short task about 13 us of CPU and one and
a half context switches. And when the supervisor dies it still kills every group it was
told of, whatever it had read by then. Run as root and as user nobody."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import audit
from support import python_script

SCRIPT = textwrap.dedent("""
    import json, os, pardo
    pardo.run(["true"], timeout=30)  # the supervisor, its launcher and the guardian
    def guardian():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\\0")
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except OSError:
                continue
            ppid = int(status.split("PPid:")[1].split()[0])
            if ppid == os.getpid() and b"--guardian-pgroups" in argv:
                return int(pid)
    def switches(pid):
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
        return sum(int(text.split(k)[1].split()[0])
                   for k in ("\\nvoluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))
    g = guardian()
    before = switches(g)
    results = [pardo.run(["true"], timeout=30) for _ in range(300)]
    after = switches(g)
    print(json.dumps({"rung": str(pardo.isolation()), "guardian": g,
                      "ok": sum(r.status == "ok" for r in results), "switches": after - before}))
""")


@pytest.mark.parametrize("who", ["root", "nobody"])
def test_the_pgroup_guardian_reads_records_in_batches(who, request, zoo):
    argv, env = python_script(SCRIPT, nobody=who == "nobody", request=request, zoo=zoo)
    env["PARDO_ISOLATION"] = "pgroup"
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=zoo.dir, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["rung"] == "pgroup" and out["guardian"], out
    assert out["ok"] == 300, out
    # 600 records: one wake-up each before; now one per 50 ms window at most (the 300
    # tasks take well under a second here, and longer only on a slower machine).
    assert out["switches"] < 100, out


KILLED_SCRIPT = textwrap.dedent("""
    import sys, time, pardo
    # Short tasks keep records coming (the guardian gathers them), and long ones each
    # leave a process of its group that only the guardian can kill once we are gone.
    for i in range(4):
        pardo.spawn(["sh", "-c", "sleep 60 & wait"], timeout=120)
    print("started", flush=True)
    while True:
        pardo.run(["true"], timeout=30)
""")


def test_a_guardian_gathering_records_still_kills_every_group_when_pardo_dies(zoo):
    token = zoo.token()
    env = dict(os.environ, PARDO_ISOLATION="pgroup", PARDO_ZOO_TOKEN=token)
    p = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT], env=env, cwd=zoo.dir,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "started"
        audit.wait_for_token_processes(token, 4, limit=20, comm="sleep",
                                       what="the tasks did not start")
        time.sleep(0.2)  # records are coming in: the guardian is gathering them
        p.kill()
        p.wait(timeout=10)
        t0 = time.monotonic()
        left = audit.survivors(token, settle=5.0)
        assert left == [], left
        # Its window does not delay the kill: the pipe's end wakes it at once.
        assert time.monotonic() - t0 < 1.0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        audit.kill_all(audit.token_processes(token))
