"""The standard ``concurrent.futures.Executor`` contract, run against every Pool backend.

Modelled on what CPython's Lib/test/test_concurrent_futures checks: submit, map (order,
several iterables, exceptions, timeout), shutdown (wait, cancel_futures, idempotence, no new
work after it), the context manager, as_completed and wait, cancellation, done callbacks,
and argument validation. One suite; the backend is a parameter.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import threading
import time
import weakref

import pytest

import pardo

BACKENDS = ["process", "thread"]
@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def pool(backend):
    with pardo.Pool(2, backend=backend) as p:
        yield p


def add(a, b=0):
    return a + b


def mul(a, b):
    return a * b


def identity(x):
    return x


def sleep_and_return(seconds, value):
    time.sleep(seconds)
    return value


def raise_value_error(message):
    raise ValueError(message)


def fail_on(x, bad):
    if x == bad:
        raise KeyError(x)
    return x


def get_pid():
    return os.getpid()


_init_state = {}


def remember(value):
    _init_state["value"] = value


def read_state():
    return _init_state.get("value")


def send_progress(n):
    for i in range(n):
        pardo.progress(i)
    return n


# -- submit ----------------------------------------------------------------------------


def test_submit_returns_future_with_result(pool):
    fut = pool.submit(add, 2, 3)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 5


def test_submit_keywords_including_a_parameter_named_fn(pool):
    assert pool.submit(add, 1, b=41).result(timeout=30) == 42
    # submit(fn, /, ...) is positional-only: "fn" may be a keyword of the task itself.
    assert pool.submit(dict, fn=1, x=2).result(timeout=30) == {"fn": 1, "x": 2}


def test_submit_lambda_and_closure(pool):
    k = 10
    assert pool.submit(lambda x: x * k, 4).result(timeout=30) == 40

    def make(n):
        return lambda: n + 1

    assert pool.submit(make(6)).result(timeout=30) == 7


def test_submit_exception_is_reraised(pool, backend):
    fut = pool.submit(raise_value_error, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        fut.result(timeout=30)
    assert isinstance(fut.exception(), ValueError)
    if backend == "process":
        cause = info.value.__cause__
        assert cause is not None
        text = str(cause)
        assert "raise_value_error" in text and "worker pid" in text


def test_submit_many_then_collect(pool):
    futs = [pool.submit(mul, i, i) for i in range(500)]
    assert [f.result(timeout=60) for f in futs] == [i * i for i in range(500)]


def test_submit_not_callable(pool):
    with pytest.raises(TypeError):
        pool.submit(42)


# -- map -------------------------------------------------------------------------------


def test_map_matches_builtin_map(pool):
    assert list(pool.map(add, range(1000))) == list(map(add, range(1000)))


def test_map_several_iterables_stops_at_shortest(pool):
    assert list(pool.map(mul, range(10), range(5))) == [i * i for i in range(5)]


def test_map_empty(pool):
    assert list(pool.map(add, [])) == []


def test_map_exception_raised_at_its_position(pool):
    it = pool.map(fail_on, range(10), itertools.repeat(5))
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(KeyError):
        next(it)


def test_map_timeout(pool):
    start = time.monotonic()
    it = pool.map(sleep_and_return, [0, 0, 5], [1, 2, 3], timeout=0.5)
    got = []
    with pytest.raises(TimeoutError):
        for x in it:
            got.append(x)
    assert got == [1, 2]
    assert time.monotonic() - start < 4


def test_map_is_lazy_over_an_endless_iterable(pool):
    out = pool.map(add, itertools.count())
    assert [next(out) for _ in range(3000)] == list(range(3000))
    out.close()


def test_map_unordered_yields_everything(pool):
    got = list(pool.map(sleep_and_return, [0.3, 0.0, 0.0], ["slow", "a", "b"], ordered=False))
    assert sorted(got) == ["a", "b", "slow"]
    assert got[-1] == "slow"


def test_map_fixed_chunksize(pool):
    assert list(pool.map(add, range(100), chunksize=7)) == list(range(100))
    with pytest.raises(ValueError):
        pool.map(add, range(3), chunksize=0)


def test_map_close_early_leaves_pool_usable(pool):
    it = pool.map(sleep_and_return, [0.01] * 200, range(200))
    assert next(it) == 0
    it.close()
    assert pool.submit(add, 1, 1).result(timeout=30) == 2


class Thing:
    def method(self):
        return "called"


def make_thing(_):
    return Thing()


class FalseyError(Exception):
    def __bool__(self):
        return False


def raise_falsey():
    raise FalseyError("falsey")


def test_map_submits_without_iteration(backend, tmp_path):
    with pardo.Pool(2, backend=backend) as p:
        p.map(touch, [str(tmp_path / f"f{i}") for i in range(10)])
    assert sorted(os.listdir(tmp_path)) == sorted(f"f{i}" for i in range(10))


def touch(path):
    open(path, "w").close()


def test_map_keeps_no_reference_to_results(pool):
    import gc

    for obj in pool.map(make_thing, range(10)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_no_stale_reference_to_the_callable(pool):
    thing = Thing()
    collected = threading.Event()
    ref = weakref.ref(thing, lambda _: collected.set())
    fut = pool.submit(thing.method)
    del thing
    assert fut.result(timeout=30) == "called"
    assert collected.wait(10), ref


def test_falsey_exception_still_raises(pool):
    # (Future.result() itself swallows falsey exceptions before CPython 3.12, so only the
    # pool's own map path is checked here.)
    with pytest.raises(FalseyError):
        list(pool.map(lambda _: raise_falsey(), range(3)))


# -- shutdown --------------------------------------------------------------------------


def test_submit_after_shutdown_raises(backend):
    p = pardo.Pool(2, backend=backend)
    p.shutdown()
    with pytest.raises(RuntimeError):
        p.submit(add, 1)
    with pytest.raises(RuntimeError):
        p.map(add, [1])
    p.shutdown()  # idempotent


def test_shutdown_wait_runs_everything_submitted(backend):
    p = pardo.Pool(2, backend=backend)
    futs = [p.submit(sleep_and_return, 0.05, i) for i in range(8)]
    p.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == list(range(8))


def test_shutdown_no_wait_still_completes(backend):
    p = pardo.Pool(2, backend=backend)
    futs = [p.submit(sleep_and_return, 0.05, i) for i in range(4)]
    p.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futs] == list(range(4))
    p.shutdown(wait=True)


def test_shutdown_cancel_futures(backend):
    p = pardo.Pool(1, backend=backend)
    first = p.submit(sleep_and_return, 0.5, "first")
    time.sleep(0.3)  # let it start
    rest = [p.submit(sleep_and_return, 0.5, i) for i in range(5)]
    p.shutdown(wait=True, cancel_futures=True)
    assert first.result() == "first"
    # the queued ones are cancelled (at most one may already have been dispatched)
    assert sum(f.cancelled() for f in rest) >= 4
    for f in rest:
        assert f.done()


def test_context_manager_shuts_down(backend):
    with pardo.Pool(2, backend=backend) as p:
        fut = p.submit(sleep_and_return, 0.1, "x")
    assert fut.done() and fut.result() == "x"
    with pytest.raises(RuntimeError):
        p.submit(add, 1)


def test_dropped_pool_finishes_its_work(backend):
    p = pardo.Pool(2, backend=backend)
    fut = p.submit(sleep_and_return, 0.1, "done")
    ref = weakref.ref(p)
    del p
    assert fut.result(timeout=30) == "done"
    assert ref() is None
    # Its threads wind down by themselves (and its workers exit) once the work is done.
    for t in threading.enumerate():
        if t.name.startswith("pardo-pool"):
            t.join(30)
            assert not t.is_alive()


# -- futures: as_completed, wait, cancel, callbacks -------------------------------------


def test_as_completed(pool):
    futs = {pool.submit(sleep_and_return, d, d) for d in (0.3, 0.0, 0.1)}
    order = [f.result() for f in cf.as_completed(futs, timeout=30)]
    assert sorted(order) == [0.0, 0.1, 0.3]
    assert order[-1] == 0.3


def test_wait_first_completed_and_all(pool):
    slow = pool.submit(sleep_and_return, 1.0, "slow")
    fast = pool.submit(sleep_and_return, 0.0, "fast")
    done, not_done = cf.wait([slow, fast], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert fast in done and slow in not_done
    done, not_done = cf.wait([slow, fast], timeout=30)
    assert not not_done


def test_wait_first_exception(pool):
    slow = pool.submit(sleep_and_return, 1.5, "slow")
    bad = pool.submit(raise_value_error, "x")
    done, not_done = cf.wait([slow, bad], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert bad in done and slow in not_done


def test_cancel_pending_future():
    for backend in BACKENDS:
        with pardo.Pool(1, backend=backend) as p:
            blocker = p.submit(sleep_and_return, 0.5, 0)
            time.sleep(0.2)
            queued = [p.submit(add, i) for i in range(3)]
            assert queued[-1].cancel()
            assert queued[-1].cancelled()
            assert blocker.result(timeout=30) == 0
            assert [f.result(timeout=30) for f in queued[:-1]] == [0, 1]


def test_done_callback_runs(pool):
    seen = threading.Event()
    got = []

    def cb(f):
        got.append(f.result())
        seen.set()

    pool.submit(add, 20, 22).add_done_callback(cb)
    assert seen.wait(30)
    assert got == [42]


# -- construction ----------------------------------------------------------------------


def test_jobs_validation(backend):
    for bad in (0, -1):
        with pytest.raises(ValueError):
            pardo.Pool(bad, backend=backend)
    with pytest.raises(TypeError):
        pardo.Pool("2", backend=backend)
    with pytest.raises(ValueError):
        pardo.Pool(2, backend="fork")


def test_default_jobs_is_cpus(backend):
    with pardo.Pool(backend=backend) as p:
        assert p.jobs == len(os.sched_getaffinity(0))


def test_initializer_runs_in_every_worker(backend):
    with pardo.Pool(2, backend=backend, initializer=remember, initargs=("ready",)) as p:
        assert set(p.map(lambda _: read_state(), range(20))) == {"ready"}


def test_progress_channel(backend):
    got = []
    with pardo.Pool(2, backend=backend) as p:
        assert list(p.map(send_progress, [3, 2], on_progress=got.append)) == [3, 2]
        fut = p.schedule(send_progress, (4,), on_progress=got.append, timeout=None)
        assert fut.result(timeout=30) == 4
    assert sorted(got) == sorted([0, 1, 2, 0, 1, 0, 1, 2, 3])
    assert pardo.progress("outside a task") is False


def test_process_backend_uses_other_processes():
    with pardo.Pool(2) as p:
        pids = set(p.map(lambda _: get_pid(), range(50)))
    assert os.getpid() not in pids


def test_thread_backend_refuses_what_threads_cannot_do():
    with pytest.raises(ValueError, match="thread"):
        pardo.Pool(2, backend="thread", task_timeout=1)
    with pytest.raises(ValueError, match="thread"):
        pardo.Pool(2, backend="thread", max_tasks_per_child=3)
    with pardo.Pool(2, backend="thread") as p:
        with pytest.raises(ValueError, match="thread"):
            p.schedule(add, (1,), timeout=1)


def test_shutdown_cancel_futures_ends_a_map_being_consumed(backend):
    p = pardo.Pool(1, backend=backend)
    it = p.map(sleep_and_return, [0.3] * 50, range(50))
    assert next(it) == 0
    got = []

    def consume():
        try:
            for x in it:
                got.append(x)
        except cf.CancelledError:
            got.append("cancelled")

    t = threading.Thread(target=consume)
    t.start()
    p.shutdown(wait=True, cancel_futures=True)
    t.join(30)
    assert not t.is_alive()
    assert got[-1] == "cancelled" and len(got) < 10
