"""multiprocessing Manager proxies passed to pool tasks work: the workers carry the
parent's multiprocessing authentication key, as multiprocessing's own children do, and it
reaches them through their pipe, never through argv or the environment."""

from __future__ import annotations

import multiprocessing
import os

import pytest

import pardo

pytestmark = pytest.mark.usefixtures("no_leaks")


def put_square(q, x):
    q.put(x * x)
    return x


def bump(d, key):
    d[key] = d.get(key, 0) + 1
    return dict(d)


def environ_and_argv_hold(key_hex):
    with open("/proc/self/cmdline", "rb") as f:
        argv = f.read()
    return key_hex.encode() in argv or any(key_hex in v for v in os.environ.values())


@pytest.fixture(scope="module")
def manager():
    # Module scope: the manager (and the helper multiprocessing keeps for the rest of the
    # process's life) exists before each test's leak snapshot.
    with multiprocessing.Manager() as m:
        yield m


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_manager_queue_round_trip(manager, backend):
    q = manager.Queue()
    with pardo.Pool(2, backend=backend) as pool:
        assert sorted(pool.map(put_square, [q] * 10, range(10))) == list(range(10))
    assert sorted(q.get(timeout=10) for _ in range(10)) == [x * x for x in range(10)]


def test_manager_dict_round_trip(manager):
    d = manager.dict()
    with pardo.Pool(2) as pool:
        for i in range(1, 4):  # one after the other: the increments must not race
            assert pool.submit(bump, d, "k").result(timeout=30) == {"k": i}
        assert pool.submit(bump, d, "other").result(timeout=30) == {"k": 3, "other": 1}
    assert dict(d) == {"k": 3, "other": 1}


def test_the_key_is_in_neither_argv_nor_environment():
    key_hex = bytes(multiprocessing.current_process().authkey).hex()
    with pardo.Pool(1) as pool:
        assert pool.submit(environ_and_argv_hold, key_hex).result(timeout=30) is False
        fut = pool.submit(lambda: bytes(multiprocessing.current_process().authkey))
        got = fut.result(timeout=30)
    assert got == bytes(multiprocessing.current_process().authkey)
