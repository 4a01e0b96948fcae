"""Helpers of the store tests: results to record, and small filesystems mounted (and
unmounted) by the test itself."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile

import pytest

from pardo import Result, Status


def make_result(status="ok", returncode=0, **kw):
    """A Result as the engine gives one, without running anything."""
    base = {"args": ["true"], "status": Status(status), "returncode": returncode,
            "started_at": 1_700_000_000.0, "duration": 0.01, "cpu_user": 0.001,
            "cpu_sys": 0.002, "max_rss": 1 << 20}
    base.update(kw)
    return Result(**base)


@contextlib.contextmanager
def small_tmpfs(size="1m", options=""):
    """A tmpfs of *size*, mounted on a fresh directory for the block's duration (root)."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (the CI runs as root)")
    d = tempfile.mkdtemp(prefix="pardo-store-fs-")
    opts = f"size={size}" + (f",{options}" if options else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", d], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], check=False)
        os.rmdir(d)


def record_batch(path, command, inputs, **kw):
    """Run a batch with map_commands and record every task into a store at *path* (the
    way the runner will); return the results by seq."""
    import socket

    import pardo
    from pardo._store import StoreSink

    sink = StoreSink(path)
    sink.run_started(template=command, inputs=list(inputs), rung=None)
    out = {}
    for r in pardo.map_commands(command, inputs, **kw):
        command = r.job.shell_line or " ".join(
            a.decode() if isinstance(a, bytes) else a for a in r.args)
        sink.task_done(r.seq, r.inputs, command, r.attempts, r, slot=r.slot,
                       host=socket.gethostname())
        out[r.seq] = r
    sink.run_ended("completed")
    return out
