"""How the CLI tests under tests/cli start the real ``pardo run``."""

import importlib.util
import os
import sys


def pardo_cmd():
    """``pardo run`` as installed beside this interpreter (a virtualenv tests its own
    install), else the same entry point through ``python -m pardo``."""
    exe = os.path.join(os.path.dirname(sys.executable), "pardo")
    if os.access(exe, os.X_OK) and importlib.util.find_spec("pardo.cli") is not None:
        return [exe, "run"]
    return [sys.executable, "-m", "pardo", "run"]
