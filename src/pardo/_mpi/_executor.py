"""``pardo.Pool(backend="mpi")``: calls run on the other ranks of an MPI job, each in a
worker process of that rank's own :class:`pardo.Pool`.

::

    rank 0: submit(fn) ─► cloudpickle ─► Dispatcher ─► TASKS ─► rank k: serve(CallRunner)
                                                                   └─► local Pool(process)
    Future ◄── set_result / set_exception ◄── RESULTS ◄── (ok, value) ◄─┘  (deadline, crash
                                                                         isolation there)

Every rank runs the script up to ``Pool(backend="mpi")``. On rank 0 the constructor returns
the pool; on every other rank it serves calls until rank 0 shuts the pool down and then
ends the process (``SystemExit(0)``), so the code after it runs on rank 0 only. A call that
segfaults or passes its deadline kills only its worker process on its rank: the rank, the
job and every other call go on (plain ``mpi4py.futures`` runs calls in the rank process
itself, where a segfault ends the whole MPI job under MPICH).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import sys
import threading
import weakref

from .._errors import UsageError
from .._pool import Pool
from ._load import require_mpi4py, under_launcher
from ._protocol import ahead_per_rank


def _default_jobs():
    return len(os.sched_getaffinity(0))


class MPIPool(Pool):
    """See :class:`pardo.Pool`; ``jobs`` is the number of worker processes on each rank
    (default: that rank's CPUs); ``task_timeout`` is enforced by the rank that runs a call."""

    def __init__(self, jobs=None, *, task_timeout=None, backend="mpi", on_progress=None,
                 **pool_kw):
        if on_progress is not None:
            raise UsageError("on_progress is not available with backend='mpi'")
        require_mpi4py()
        self._backend_name = "mpi"
        self._default_timeout = task_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._local = None
        self._futures = {}
        self._next_id = 0
        slots = _default_jobs() if jobs is None else jobs
        from ._load import check_world, load_mpi

        if under_launcher():
            check_world(load_mpi().COMM_WORLD.Get_size())
        if not under_launcher() or load_mpi().COMM_WORLD.Get_size() == 1:
            print("pardo.Pool(backend='mpi'): one MPI process: running calls locally",
                  file=sys.stderr)
            self._local = Pool(slots, task_timeout=task_timeout, **pool_kw)
            self.jobs = slots
            return
        from ._transport_mpi import MPITransport

        t = MPITransport()
        if t.rank != 0:
            from ._serve import CallRunner, serve

            serve(t, CallRunner(slots, pool_kw), credit=slots + ahead_per_rank(slots),
                  slots=slots)
            sys.exit(0)  # the rest of the script is rank 0's (an exit, not an error)
        from ._dispatch import Dispatcher

        self._dispatcher = Dispatcher(t, self._on_result)
        self._dispatcher.start()
        self.jobs = self._dispatcher.slots
        self._hosts = {r.rank: r.host for r in self._dispatcher.ranks.values()}
        ref = weakref.ref(self)
        # a pool never shut down must still release the worker ranks, or the job never ends
        self._atexit = lambda: (p := ref()) is not None and p.shutdown(wait=False,
                                                                       cancel_futures=True)
        atexit.register(self._atexit)

    @property
    def backend(self):
        return "mpi"

    def submit(self, fn, /, *args, **kwargs):
        return self._schedule_call(fn, args, kwargs, self._default_timeout)

    def schedule(self, fn, args=(), kwargs=None, *, timeout=..., on_progress=None):
        if on_progress is not None:
            raise UsageError("on_progress is not available with backend='mpi'")
        timeout = self._default_timeout if timeout is ... else timeout
        return self._schedule_call(fn, tuple(args), dict(kwargs or {}), timeout)

    def _schedule_call(self, fn, args, kwargs, timeout):
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if self._local is not None:
            return self._local.schedule(fn, args, kwargs, timeout=timeout)
        import cloudpickle

        blob = cloudpickle.dumps((fn, args, kwargs))
        fut = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._next_id += 1
            tid = self._next_id
            self._futures[tid] = fut
        fut.add_done_callback(lambda f, tid=tid: f.cancelled() and self._dispatcher.kill(tid))
        self._dispatcher.submit(tid, ("call", blob, timeout))
        return fut

    def _on_result(self, tid, blob, rank):
        with self._lock:
            fut = self._futures.pop(tid, None)
        if fut is None or fut.done():
            return
        if blob is None:
            if rank is None:
                fut.cancel()
                return
            from .._errors import BrokenPool

            fut.set_exception(BrokenPool(
                "the MPI rank running this call was lost and no rank is left to run it"))
            return
        import pickle

        try:
            ok, value = pickle.loads(blob)
        except Exception as e:  # noqa: BLE001 - the caller gets why
            fut.set_exception(e)
            return
        if ok:
            fut.set_result(value)
        elif value is None:
            fut.cancel()
        else:
            if isinstance(value, BaseException):
                value.add_note(f"(on MPI rank {rank} of {self._dispatcher._t.size} "
                               f"on {self._hosts.get(rank, '?')})")
            fut.set_exception(value)

    def map(self, fn, *iterables, timeout=None, chunksize=1, task_timeout=...):
        if self._local is not None:
            kw = {} if task_timeout is ... else {"task_timeout": task_timeout}
            return self._local.map(fn, *iterables, timeout=timeout, **kw)
        if task_timeout is ...:
            return concurrent.futures.Executor.map(self, fn, *iterables, timeout=timeout)
        fs = [self.schedule(fn, args, timeout=task_timeout) for args in zip(*iterables)]
        return _results(fs, timeout)

    def shutdown(self, wait=True, *, cancel_futures=False):
        if self._local is not None:
            self._local.shutdown(wait=wait, cancel_futures=cancel_futures)
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            futures = list(self._futures.values())
        atexit.unregister(self._atexit)
        if cancel_futures:
            for f in futures:
                f.cancel()
        if wait or cancel_futures:
            concurrent.futures.wait(futures)
        # the dispatcher sends SHUTDOWN once nothing is in flight; without wait, that happens
        # on its own thread (bounded) while the caller goes on
        if wait:
            self._dispatcher.close()
        else:
            threading.Thread(target=self._dispatcher.close, daemon=False,
                             name="pardo-mpi-close").start()

    def __repr__(self):
        return f"<pardo.Pool jobs={self.jobs} backend='mpi'>"


def _results(fs, timeout):
    def gen():
        for f in fs:
            yield f.result(timeout)
    return gen()
