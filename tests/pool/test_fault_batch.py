"""Faults stay with their own task: the mixed batch of issue 10, run several times.

Calls that were only queued on a worker when it died (a deadline, a segfault, os._exit)
never started there: when the worker's watch record names the call that was running, only that
call fails, and the others run on a fresh worker however many deaths they sit through.
``faultbatch.py`` run as a script repeats the batch many times, idle and under load.
"""

from __future__ import annotations

import pytest

from tests.pool import faultbatch

pytestmark = pytest.mark.usefixtures("no_leaks")

RUNS = 3


@pytest.mark.parametrize("run", range(RUNS))
def test_mixed_fault_batch(run):
    assert faultbatch.one_run() == []


def test_a_death_that_names_no_call_still_charges_a_try():
    """The try count stays for deaths whose culprit is unknown: a worker killed from
    outside before it read the call queued on it (its watch record names nothing)."""
    import os
    import signal
    import time

    import pardo

    with pardo.Pool(1) as pool:
        pid = pool.submit(os.getpid).result(timeout=30)
        os.kill(pid, signal.SIGSTOP)  # it cannot read what is sent to it now
        fut = pool.submit(time.sleep, 1.0)
        backend = pool._backend
        deadline = time.monotonic() + 10
        while not (backend._workers[0] is not None and backend._workers[0].inflight):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        [item] = backend._workers[0].inflight.values()
        os.kill(pid, signal.SIGKILL)
        assert fut.result(timeout=30) is None  # re-run on a fresh worker
        assert item.tries == 1
