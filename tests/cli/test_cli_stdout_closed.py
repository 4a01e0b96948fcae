"""A closed stdout (``pardo run ... | head``) stops the run promptly in every output mode."""

import os
import subprocess
import time

import pytest

from pardo_cli import pardo_cmd

# Each task prints forever; in --group mode nothing reaches stdout until a task ends, so
# only watching the pipe itself can notice that the reader left.
_LOOP = "while :; do echo {}; sleep 0.1; done"


@pytest.mark.parametrize("mode", [[], ["--line-buffer"], ["--ungroup"]],
                         ids=["group", "line-buffer", "ungroup"])
def test_reader_leaving_stops_the_run_with_141(mode):
    r, w = os.pipe()
    p = subprocess.Popen(pardo_cmd() + mode + ["-j2", _LOOP, ":::", "a", "b"], stdout=w,
                         stderr=subprocess.PIPE)
    os.close(w)
    try:
        if mode:
            assert os.read(r, 1)  # the tasks are printing
        else:
            time.sleep(0.5)  # the tasks are running (their output is held)
        closed = time.monotonic()
        os.close(r)
        r = -1
        rc = p.wait(timeout=15)
        took = time.monotonic() - closed
    finally:
        if r >= 0:
            os.close(r)
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()
    assert rc == 141
    assert took < 5, f"{took:.2f} s from the reader leaving to pardo's exit"
