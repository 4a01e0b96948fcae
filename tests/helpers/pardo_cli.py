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
