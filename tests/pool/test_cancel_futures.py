"""``shutdown(cancel_futures=True)`` right after submitting: calls given to an idle pool
have started (been claimed for an idle worker) by the time ``submit`` returns, so they run,
as with the standard library's executors, which run some of 50 calls submitted just before
such a shutdown (ProcessPoolExecutor(2): up to 3, ThreadPoolExecutor(2): 1-2)."""

from __future__ import annotations

import time

import pytest

import pardo

pytestmark = pytest.mark.usefixtures("no_leaks")


def nap(x):
    time.sleep(0.02)
    return x


@pytest.mark.parametrize("backend", ["process", "thread"])
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_calls_given_to_an_idle_pool_run_despite_cancel_futures(backend, warm):
    p = pardo.Pool(2, backend=backend)
    try:
        if warm:
            p.submit(nap, -1).result(timeout=30)
            time.sleep(0.1)  # the pool is idle again
        futs = [p.submit(nap, i) for i in range(50)]
        running_at_once = [f.running() for f in futs[:2]]
        p.shutdown(wait=True, cancel_futures=True)
    finally:
        p.shutdown()
    assert all(f.done() for f in futs)
    ran = [f.result() for f in futs if not f.cancelled()]
    # Both workers were idle: the first two calls were claimed before submit returned.
    assert running_at_once == [True, True]
    assert ran[:2] == [0, 1], ran
    assert len(ran) < 50, "the queued calls were not cancelled"
    assert ran == sorted(ran)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_a_busy_pool_still_cancels_what_is_queued(backend):
    p = pardo.Pool(2, backend=backend)
    try:
        busy = [p.submit(time.sleep, 0.5) for _ in range(2)]
        while not all(f.running() for f in busy):
            time.sleep(0.01)
        time.sleep(0.05)
        queued = [p.submit(nap, i) for i in range(20)]
        p.shutdown(wait=True, cancel_futures=True)
    finally:
        p.shutdown()
    assert [f.result() for f in busy] == [None, None]
    assert sum(f.cancelled() for f in queued) >= 16
    assert all(f.done() for f in queued)
