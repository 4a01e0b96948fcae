"""SystemExit and KeyboardInterrupt raised while a call's data is (un)pickled fail that
call, not a process or a thread: the worker that hit one goes on serving, and so does the
pool's manager thread in the parent.
"""

from __future__ import annotations

import os
import pickle

import pytest

import pardo

pytestmark = pytest.mark.usefixtures("no_leaks")

KINDS = [SystemExit, KeyboardInterrupt]
BASE_EXCEPTIONS = {kind.__name__: kind for kind in KINDS}


def raise_base(kind_name):
    raise BASE_EXCEPTIONS[kind_name]("raised on load")


class RaisesOnLoad:
    """Pickles fine; unpickling it raises the BaseException named."""

    def __init__(self, kind):
        self.kind = kind.__name__

    def __reduce__(self):
        return (raise_base, (self.kind,))


class RaisesOnDump:
    """Pickling it raises the BaseException named."""

    def __init__(self, kind):
        self.kind = kind

    def __reduce__(self):
        raise self.kind("raised on dump")


def ident(x):
    return x


def pid_of(_=None):
    return os.getpid()


def return_raises_on_dump(kind_name):
    return RaisesOnDump(BASE_EXCEPTIONS[kind_name])


def return_raises_on_load(kind_name, x=None):
    if x is not None and x != 1:
        return x
    return RaisesOnLoad(BASE_EXCEPTIONS[kind_name])


def maybe_raises_on_dump(kind_name, x):
    return return_raises_on_dump(kind_name) if x == 1 else x


@pytest.mark.parametrize("kind", KINDS)
def test_base_exception_while_the_worker_unpickles_arguments(kind):
    with pardo.Pool(1) as pool:
        pid = pool.submit(pid_of).result(timeout=30)
        with pytest.raises(pickle.UnpicklingError, match="raised on load") as info:
            pool.submit(ident, RaisesOnLoad(kind)).result(timeout=30)
        assert "ident()" in str(info.value)
        assert not isinstance(info.value, pardo.TaskCrashed)
        # The same worker goes on.
        assert pool.submit(pid_of).result(timeout=30) == pid


@pytest.mark.parametrize("kind", KINDS)
def test_base_exception_while_the_worker_pickles_a_result(kind):
    with pardo.Pool(1) as pool:
        pid = pool.submit(pid_of).result(timeout=30)
        with pytest.raises(pickle.PicklingError, match="raised on dump") as info:
            pool.submit(return_raises_on_dump, kind.__name__).result(timeout=30)
        assert f"({kind.__name__}: raised on dump)" in str(info.value)
        it = pool.map(maybe_raises_on_dump, [kind.__name__] * 3, [0, 1, 2], chunksize=1)
        assert next(it) == 0
        with pytest.raises(pickle.PicklingError, match="raised on dump"):
            next(it)
        assert pool.submit(pid_of).result(timeout=30) == pid


def test_system_exit_while_the_parent_unpickles_a_result():
    with pardo.Pool(1) as pool:
        with pytest.raises(pickle.UnpicklingError, match="raised on load") as info:
            pool.submit(return_raises_on_load, "SystemExit").result(timeout=30)
        assert isinstance(info.value.__cause__, SystemExit)
        # The manager thread is alive: the pool goes on, with futures and with map.
        assert pool.submit(ident, 5).result(timeout=30) == 5
        it = pool.map(return_raises_on_load, ["SystemExit"] * 3, [0, 1, 2], chunksize=1)
        assert next(it) == 0
        with pytest.raises(pickle.UnpicklingError, match="raised on load"):
            next(it)
        assert list(pool.map(ident, range(100))) == list(range(100))


def test_system_exit_while_the_parent_pickles_arguments():
    with pardo.Pool(1) as pool:
        with pytest.raises(pickle.PicklingError, match="raised on dump"):
            pool.submit(ident, RaisesOnDump(SystemExit)).result(timeout=30)
        assert pool.submit(ident, 6).result(timeout=30) == 6
