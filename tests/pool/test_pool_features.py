"""pardo.Pool beyond the executor contract: shared-memory buffers, lazy maps, batching
that keeps every worker busy, classes from ``__main__``, the progress bar, the talk
channel, and pardo.releases_gil."""

from __future__ import annotations

import glob
import io
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import pardo
from pardo._pool import shm as _shm


def double_array(a):
    return a * 2


def array_info(a):
    return a.shape, a.dtype.str, float(a.sum()), a.flags.writeable


def make_array(n):
    return np.arange(n, dtype=np.float64)


def add(a, b=0):
    return a + b


def sleep_and_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def chatty(n):
    for i in range(n):
        pardo.progress({"step": i, "pid": os.getpid()})
    return n


def pool_files(p):
    return glob.glob(os.path.join(_shm.SHM_DIR, p._backend.token + "*"))


def test_large_arrays_round_trip_through_shared_memory(pool):
    big = np.random.default_rng(1).random(2_000_000)  # 16 MB: out of band
    out = pool.submit(double_array, big).result(timeout=60)
    np.testing.assert_array_equal(out, big * 2)
    assert out.flags.writeable
    shape, dtype, total, writeable = pool.submit(array_info, big).result(timeout=60)
    assert (shape, dtype, writeable) == (big.shape, big.dtype.str, True)
    assert total == pytest.approx(float(big.sum()))
    results = list(pool.map(make_array, [10, 1_000_000, 3]))
    assert [len(r) for r in results] == [10, 1_000_000, 3]
    assert pool_files(pool) == []  # every buffer file is gone once its task settled


def test_out_of_band_payload_uses_files_not_the_pipe(tmp_path):
    arena = _shm.BufferArena(f"pardo-test-{os.getpid()}")
    payload = _shm.dumps(np.ones(1_000_000), arena)
    assert isinstance(payload, tuple) and len(payload[1]) == 1
    assert len(payload[0]) < 10_000  # the pickle itself carries only the name
    back = _shm.loads(payload, unlink_after=True)
    assert back.sum() == 1_000_000
    assert not os.path.exists(os.path.join(_shm.SHM_DIR, payload[1][0]))
    small = _shm.dumps(np.ones(10), arena)
    assert isinstance(small, bytes)


def test_shared_memory_files_swept_when_a_worker_dies(pool):
    def crash_after_big_result_written():
        import os as _os

        import numpy as _np

        import pardo as _pardo

        _pardo.progress(_np.ones(1_000_000))  # written to /dev/shm, sent, then...
        _os._exit(9)

    seen = []
    fut = pool.schedule(crash_after_big_result_written, on_progress=seen.append)
    with pytest.raises(pardo.TaskCrashed):
        fut.result(timeout=60)
    assert len(seen) == 1 and seen[0].sum() == 1_000_000
    assert pool_files(pool) == []


def test_map_consumes_its_input_lazily(pool):
    consumed = itertools.count()

    def numbers():
        for i in itertools.count():
            next(consumed)
            yield i

    it = pool.map(add, numbers())
    assert [next(it) for _ in range(10)] == list(range(10))
    taken = next(consumed)
    assert taken < 100_000  # a bounded window, not the (endless) input
    it.close()


def test_slow_tasks_spread_over_every_worker(pool):
    # Warm both workers: a worker's first task imports this module, which takes a while.
    assert len(set(pool.map(sleep_and_pid, [0.1] * 4))) == 2
    start = time.monotonic()
    pids = list(pool.map(sleep_and_pid, [0.2] * 6))
    elapsed = time.monotonic() - start
    counts = sorted(pids.count(p) for p in set(pids))
    assert counts == [3, 3], counts
    assert elapsed < 1.1  # 0.6 s if balanced, 1.2 s if one worker did everything


def test_batches_grow_for_tiny_tasks_and_stay_small_for_slow_ones(pool):
    assert list(pool.map(add, range(50_000))) == list(range(50_000))
    assert pool._backend.batch_hint() > 100
    list(pool.map(sleep_and_pid, [0.05] * 6))
    assert pool._backend.batch_hint() <= 2


def test_progress_values_arrive_in_order_per_task(pool):
    got = []
    assert list(pool.map(chatty, [5, 5, 5], on_progress=got.append)) == [5, 5, 5]
    by_pid = {}
    for value in got:
        by_pid.setdefault(value["pid"], []).append(value["step"])
    for steps in by_pid.values():
        # each worker ran whole tasks one after another: steps count 0..4 repeatedly
        assert steps == [i % 5 for i in range(len(steps))]
    assert len(got) == 15


def test_pool_wide_progress_callback_and_exceptions_in_it_are_contained():
    got = []

    def cb(value):
        got.append(value)
        raise RuntimeError("callback bug")

    with pardo.Pool(1, on_progress=cb) as p:
        assert p.submit(chatty, 2).result(timeout=30) == 2
        assert p.submit(add, 1).result(timeout=30) == 1
    assert len(got) == 2


MAIN_SCRIPT = textwrap.dedent(
    """
    import dataclasses, pardo

    @dataclasses.dataclass
    class Point:
        x: int
        y: int

        def norm1(self):
            return abs(self.x) + abs(self.y)

    def shift(p, dx):
        return Point(p.x + dx, p.y)

    if __name__ == "__main__":
        with pardo.Pool(2) as pool:
            out = list(pool.map(shift, [Point(i, -i) for i in range(100)], [1] * 100))
        assert all(isinstance(p, Point) for p in out), type(out[0])
        print(sum(p.norm1() for p in out))
    """
)


def test_functions_and_classes_defined_in_main(tmp_path):
    script = tmp_path / "main_classes.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(sum(abs(i + 1) + abs(-i) for i in range(100)))


def test_progress_bar_renders_on_a_terminal():
    from rich.console import Console

    from pardo._pool.progress_bar import open_bar

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    bar = open_bar(50, "squares", console=console)
    bar.update(20)
    bar.update(50)
    bar.close()
    text = buf.getvalue()
    assert "squares" in text and "50/50" in text


def test_progress_true_draws_nothing_off_a_terminal(pool, capsys):
    assert list(pool.map(add, range(100), progress=True)) == list(range(100))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def sleepy(seconds):
    time.sleep(seconds)


def python_loop(n):
    total = 0
    for i in range(n):
        total += i
    return total


def test_releases_gil_on_sleep_and_on_a_python_loop():
    sleeping = pardo.releases_gil(sleepy, 0.05, threads=2)
    assert sleeping and sleeping.speedup > 1.5
    for _ in range(3):  # timing on a shared machine: the first clean measurement counts
        looping = pardo.releases_gil(python_loop, 2_000_000, threads=2)
        if not looping:
            break
    assert not looping, str(looping)
    assert "use backend='process'" in str(looping)
    with pytest.raises(ValueError):
        pardo.releases_gil(sleepy, 0, threads=1)


def test_thread_backend_map_and_progress_use_threads():
    seen = []
    main = threading.get_ident()
    with pardo.Pool(3, backend="thread", on_progress=seen.append) as p:
        idents = list(p.map(lambda _: (pardo.progress(1), threading.get_ident())[1], range(30)))
    assert main not in idents and len(set(idents)) <= 3
    assert seen == [1] * 30
