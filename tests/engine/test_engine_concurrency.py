"""Several pardo processes at once must not slow each other beyond sharing the CPUs.

Regression test: a supervisor once dropped its fds from epoll by closing them alone. A
child between the end of its vfork and its close-on-exec step still held copies, so the
registrations outlived the close, epoll_wait kept returning them, and two busy pardo
processes spun their (real-time) supervisor threads at several ms of CPU per task."""

import json
import subprocess
import sys

WORKER = r"""
import json, os, sys
import pardo
n = int(sys.argv[1])
q = pardo.ResultQueue(max_running=2)
pardo.run(["true"])
done = started = 0
while done < n:
    while started < n and started - done < 8:
        pardo.spawn(["true"], timeout=60, queue=q); started += 1
    for t in q.get_many():
        assert t.result.ok, t.result
        done += 1
for tid in os.listdir("/proc/self/task"):
    st = open(f"/proc/self/task/{tid}/stat").read()
    if "(pardo-supervise)" in st:
        f = st[st.rindex(")") + 2:].split()
        cpu = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        print(json.dumps({"cpu_per_task": cpu / n}))
"""


def test_two_busy_pardo_processes_do_not_spin():
    n = 600
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(n)], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0
        per_task = json.loads(out.strip().splitlines()[-1])["cpu_per_task"]
        # ~0.1 ms normally; the spinning supervisor used several ms per task
        assert per_task < 0.001, f"supervisor thread used {per_task * 1e3:.2f} ms of CPU per task"
