"""Faults stay with their own task: the mixed batch of issue 10, run several times.

Calls that were only queued on a worker when it died (a deadline, a segfault, os._exit)
never started there: when the worker's slot names the call that was running, only that
call fails, and the others run on a fresh worker however many deaths they sit through.
``faultbatch.py`` run as a script repeats the batch many times, idle and under load.
"""

from __future__ import annotations

import faultbatch
import pytest

pytestmark = pytest.mark.usefixtures("no_leaks")

RUNS = 3


@pytest.mark.parametrize("run", range(RUNS))
def test_mixed_fault_batch(run):
    assert faultbatch.one_run() == []
