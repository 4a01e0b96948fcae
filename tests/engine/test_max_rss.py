"""Result.max_rss should be the task tree's own peak, whatever the size of the Python
process that starts it. A child cloned from a big parent shares (or copies) its address
space until its exec, and the kernel carries that address space's high-water mark into the
task's rusage: /bin/true started by a Python process holding 300 MiB reported 300 MiB.

So no rung clones a task from the caller: the shepherd rung's tasks are started by the
keepers pardo's launcher forks (kept for task after task), the cgroup and pgroup rungs' by
the launcher itself (as the supervisor's own children, CLONE_PARENT). Run as root and,
where the rung works for them, as user nobody."""

import json
import subprocess
import textwrap

import pytest

from support import cgroup2_writable, python_script

SCRIPT = textwrap.dedent("""
    import json, resource, pardo
    big = bytearray(b"x") * (300 << 20)  # every page touched: resident
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    small = [pardo.run(["true"], timeout=30) for _ in range(3)]
    # The figure still counts what the task itself uses: a child that holds 100 MiB.
    grow = pardo.run([sys.executable, "-c",
                      "b = bytearray(b'y') * (100 << 20); import time; time.sleep(0.05)"],
                     timeout=60)
    print(json.dumps({"rung": str(pardo.isolation()), "own": own,
                      "small": [[r.status.value, r.max_rss] for r in small],
                      "grow": [grow.status.value, grow.max_rss], "big": len(big)}))
""").replace("import json,", "import json, sys,")


# "-nobody": the same rung for an unprivileged user (setpriv to user nobody).
@pytest.mark.parametrize("rung", ["cgroup", "shepherd", "pgroup", "shepherd-nobody",
                                  "pgroup-nobody"])
def test_max_rss_is_the_tasks_own_peak(rung, request, zoo):
    if rung == "cgroup" and not cgroup2_writable():
        pytest.skip("no writable cgroup2 here (not root, or read-only cgroupfs)")
    base = rung.removesuffix("-nobody")
    argv, env = python_script(SCRIPT, nobody=base != rung, request=request, zoo=zoo)
    env["PARDO_ISOLATION"] = base
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=zoo.dir, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["rung"] == base
    assert out["own"] >= 300 << 20, out
    for status, rss in out["small"]:
        assert status == "ok", out
        # /bin/true's own peak is one or two MiB: far from the parent's 300.
        assert 0 < rss < 16 << 20, out
    status, rss = out["grow"]
    assert status == "ok" and 100 << 20 <= rss < 250 << 20, out
