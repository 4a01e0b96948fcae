"""Running the installed ``pardo`` command from tests (on sys.path through conftest.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys


def pardo_cmd():
    """The command line that runs ``pardo run``: the ``pardo`` script installed beside this
    interpreter (so a virtualenv tests its own install, not whatever ``pardo`` comes first
    on PATH), else the same entry point through ``python -m pardo``."""
    exe = os.path.join(os.path.dirname(sys.executable), "pardo")
    if os.access(exe, os.X_OK) and importlib.util.find_spec("pardo._cli") is not None:
        return [exe, "run"]
    return [sys.executable, "-m", "pardo", "run"]


def run(args, stdin=None, timeout=60, **kw):
    """``pardo run ARGS``, its output captured."""
    return subprocess.run(pardo_cmd() + args, input=stdin, capture_output=True,
                          timeout=timeout, **kw)


def peak_rss_of(cmd, timeout=600):
    """Run *cmd* from a fresh small interpreter and return (exit status, the command's own
    peak RSS in bytes): ru_maxrss of the children of a process that started only it (a
    process started from a big parent would carry the parent's high-water mark)."""
    probe = ("import resource, subprocess, sys\n"
             "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
             "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n")
    p = subprocess.run([sys.executable, "-S", "-c", probe, *cmd], capture_output=True,
                       text=True, timeout=timeout)
    rc, rss = p.stdout.split()
    return int(rc), int(rss)
