"""pardo.Pool: Python callables on every core, each task with its own deadline.

```
 Pool.submit / schedule ──► WorkItem (1 call) + Future ──┐
 Pool.map ──► MapRun: pulls the iterables lazily, cuts   ├─► backend ─► settle into
              them into WorkItems of many calls ─────────┘   │          Future / MapRun
                                               process: process.py; thread: thread.py
```

- :class:`Pool` validates, builds WorkItems, and owns the public contract
  (``concurrent.futures.Executor``). Everything that runs tasks sits behind the backend
  interface: ``put_many(items)``, ``shutdown(wait, cancel_futures)``, ``terminate(reason)``,
  ``batch_hint()``.
- :class:`MapRun` (``map_run.py``) is one ``map`` call: it keeps at most a window of calls in flight
  (enough to keep every worker's batches full), in chunks as long as the backend's current
  batch size, collects outcomes behind one condition variable, and yields them in order
  (or as they complete with ``ordered=False``).
- A pool still open at interpreter exit, or shut down without waiting, is waited for
  there, as the standard library's executors are: what was submitted gets done, and the
  workers end before the interpreter. Ctrl-C during that wait kills them instead.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import weakref

from .._errors import BrokenPool, UsageError
from .._run import parse_size
from .items import FUTURE_SINK, WHOLE_CHUNK, WorkItem
from .map_run import MapRun

__all__ = ["Pool", "default_jobs"]

_POOL_DEFAULT = object()  # "use the pool's task_timeout"
_BACKENDS = ("process", "thread")


def default_jobs() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _timeout_ns(value, what) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(value).__name__}")
    if not value > 0:
        raise UsageError(f"{what} must be > 0 seconds, got {value!r}")
    return max(1, int(value * 1e9))


_live_backends = set()
_live_lock = threading.Lock()


def _join_live_pools():
    """At interpreter exit: finish the work of every pool not yet done, as the standard
    library's executors do (``shutdown(wait=False)`` and pools never shut down included),
    so that every worker has ended before the interpreter does. An interrupt (Ctrl-C)
    while waiting kills what still runs instead."""
    with _live_lock:
        backends = list(_live_backends)
    try:
        for backend in backends:
            backend.shutdown(wait=True)
    except BaseException:
        reason = BrokenPool(
            "the interpreter was interrupted at exit while this task ran; its worker was killed"
        )
        for backend in backends:
            backend.terminate(reason)
        # Not raised on: the interpreter is ending anyway, and the other exit hooks
        # (the standard library's executors) must still run.
    finally:
        with _live_lock:
            _live_backends.difference_update(backends)


# Runs before threading joins non-daemon threads and before the engine's own exit handler.
threading._register_atexit(_join_live_pools)


class Pool(concurrent.futures.Executor):
    """Runs Python callables in parallel, on every core, each task with its own deadline.

    A ``concurrent.futures.Executor``: ``submit``, ``map``, ``shutdown`` and the
    ``with`` statement behave as in the standard library, and ``as_completed``/``wait``
    work on its futures; but a ``with`` block left by an exception (Ctrl-C) stops the
    pool at once (:meth:`terminate`) instead of waiting for its work. The README lists
    every difference from ``ProcessPoolExecutor``.

    With ``backend="process"`` (the default) tasks run in worker processes that the engine
    starts and watches, in the same isolation as commands:

    * a task past its deadline (``task_timeout``, counted from its start in the worker)
      fails with :class:`pardo.TaskTimeout`, and its worker's whole process tree is killed —
      including processes the task started, and even while the task holds the GIL in C;
    * a worker that dies (segfault, ``os._exit``, SIGKILL, OOM kill) fails only the task it
      was running, with :class:`pardo.TaskCrashed`; tasks queued behind it run on a fresh
      worker, and the pool goes on;
    * an exception in a task is re-raised in the caller with the worker's traceback as
      ``__cause__``;
    * callables and arguments go through cloudpickle when plain pickle cannot take them, so
      lambdas, closures and classes defined in ``__main__`` work; large buffers (numpy
      arrays) travel through shared memory.

    Tasks are sent in batches sized from how long tasks take, so tiny tasks reach hundreds
    of thousands per second while long ones still spread over every worker.

    ``backend="thread"`` runs tasks on threads of this process: for work that releases the
    GIL (see :func:`pardo.releases_gil`). It has no deadlines and no crash isolation.

    Args:
        jobs: number of workers; default: the CPUs this process may run on.
        task_timeout: default per-task deadline in seconds (None: none).
        backend: ``"process"``, ``"thread"``, or ``"mpi"`` (in a script started with
            ``mpiexec``: calls run on the other ranks, each in a process pool of that rank;
            see the README's "Across a cluster").
        max_tasks_per_child: replace a worker process after it ran this many tasks.
        initializer, initargs: ``initializer(*initargs)`` runs once in every worker; if it
            raises, the pool is broken (:class:`BrokenPool`).
        kill_grace: seconds between SIGTERM and SIGKILL when a deadline kills a worker tree.
        memory_limit: per-worker memory limit (bytes or "512M"), where isolation allows.
        nice: niceness of the worker processes.
        on_progress: default callback for values tasks send with :func:`pardo.progress`;
            it runs on the pool's manager thread, so keep it short.
    """

    def __new__(cls, *args, backend="process", **kwargs):
        # backend="mpi" is a pool of its own kind (calls go to other MPI ranks), kept in the
        # mpi part so that only it imports mpi4py
        if backend == "mpi" and cls is Pool:
            from .._mpi import MPIPool

            return super().__new__(MPIPool)
        return super().__new__(cls)

    def __init__(
        self,
        jobs=None,
        *,
        task_timeout=None,
        backend="process",
        max_tasks_per_child=None,
        initializer=None,
        initargs=(),
        kill_grace=0.5,
        memory_limit=None,
        nice=None,
        on_progress=None,
    ):
        if jobs is None:
            jobs = default_jobs()
        if isinstance(jobs, bool) or not isinstance(jobs, int):
            raise TypeError(f"jobs must be an int or None, not {type(jobs).__name__}")
        if jobs <= 0:
            raise UsageError(f"jobs must be at least 1, got {jobs}")
        if backend not in _BACKENDS:
            raise UsageError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if max_tasks_per_child is not None and (
            not isinstance(max_tasks_per_child, int) or max_tasks_per_child <= 0
        ):
            raise UsageError(
                f"max_tasks_per_child must be a positive int, got {max_tasks_per_child!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        self._timeout_ns = _timeout_ns(task_timeout, "task_timeout")
        if memory_limit is not None:
            parse_size(memory_limit, "memory_limit")  # a bad size fails here, not at a task
        self._backend_name = backend
        if backend == "thread":
            for name, value in (
                ("task_timeout", task_timeout),
                ("max_tasks_per_child", max_tasks_per_child),
                ("memory_limit", memory_limit),
                ("nice", nice),
            ):
                if value is not None:
                    raise UsageError(_thread_cannot(name))
            from .thread import ThreadBackend

            self._backend = ThreadBackend(jobs, initializer=initializer, initargs=initargs)
        else:
            from .process import ProcessBackend

            self._backend = ProcessBackend(
                jobs,
                initializer=initializer,
                initargs=initargs,
                max_tasks_per_child=max_tasks_per_child,
                kill_grace=kill_grace,
                memory_limit=memory_limit,
                nice=nice,
            )
        self.jobs = jobs
        self._on_progress = on_progress
        self._shutdown_lock = threading.Lock()
        self._closed = False
        self._backend.on_done = _forget
        with _live_lock:
            _live_backends.add(self._backend)
        # A pool dropped without shutdown() finishes its work in the background and exits.
        self._finalizer = weakref.finalize(self, _finalize, self._backend)

    @property
    def backend(self) -> str:
        return self._backend_name

    def _task_timeout(self, value, what):
        if value is _POOL_DEFAULT:
            return self._timeout_ns
        ns = _timeout_ns(value, what)
        if ns and self._backend_name == "thread":
            raise UsageError(_thread_cannot(what))
        return ns

    def submit(self, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)``; return a Future. The pool's ``task_timeout``
        applies; use :meth:`schedule` to give one task its own."""
        return self._schedule(fn, args, kwargs, self._timeout_ns, self._on_progress)

    def schedule(self, fn, args=(), kwargs=None, *, timeout=_POOL_DEFAULT, on_progress=None):
        """Schedule ``fn(*args, **kwargs)`` with its own deadline; return a Future.

        Args:
            timeout: seconds the task may run, counted from its start in a worker; None for
                no deadline; by default the pool's ``task_timeout``.
            on_progress: callback for this task's :func:`pardo.progress` values.
        """
        tns = self._task_timeout(timeout, "timeout")
        return self._schedule(fn, tuple(args), dict(kwargs or {}), tns,
                              on_progress or self._on_progress)

    def _schedule(self, fn, args, kwargs, timeout_ns, on_progress):
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        fut = concurrent.futures.Future()
        item = WorkItem(fn, [args], [kwargs] if kwargs else None, timeout_ns, FUTURE_SINK, fut,
                        0, on_progress)
        self._submit((item,))
        return fut

    def _submit(self, items):
        with self._shutdown_lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._backend.put_many(items)

    def map(
        self,
        fn,
        *iterables,
        timeout=None,
        chunksize="auto",
        task_timeout=_POOL_DEFAULT,
        ordered=True,
        progress=False,
        on_progress=None,
    ):
        """Like the built-in ``map``, in parallel; returns an iterator of results.

        The iterables are consumed lazily: only a window of tasks is in flight at any time,
        so an endless or huge iterable works in bounded memory. Work starts at once.

        Args:
            timeout: overall seconds, from this call, to wait for each next result before
                the iterator raises ``TimeoutError`` (as in the standard library).
            chunksize: "auto" (adaptive batches) or a fixed number of tasks per batch.
            task_timeout: per-task deadline in seconds (default: the pool's).
            ordered: yield in input order (True) or as tasks complete (False).
            progress: show a live progress bar (rich) when stderr is a terminal.
            on_progress: callback for the tasks' :func:`pardo.progress` values.

        Raises:
            The first failed task's exception, when the iterator reaches it; the tasks still
            queued are then cancelled.
        """
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if chunksize != "auto":
            if (
                isinstance(chunksize, bool)
                or not isinstance(chunksize, int)
                or not 1 <= chunksize < WHOLE_CHUNK
            ):
                raise UsageError(
                    f"chunksize must be 'auto' or an int from 1 to {WHOLE_CHUNK - 1}, "
                    f"got {chunksize!r}"
                )
        else:
            chunksize = None
        tns = self._task_timeout(task_timeout, "task_timeout")
        total = None
        try:
            total = min(len(it) for it in iterables) if iterables else 0
        except TypeError:
            pass
        bar = None
        if progress:
            from .progress_bar import open_bar

            bar = open_bar(total, getattr(fn, "__name__", "tasks"))
        run = MapRun(
            self._submit,
            self._backend,
            self.jobs,
            fn,
            zip(*iterables),
            tns,
            ordered,
            chunksize,
            on_progress or self._on_progress,
            bar,
            pickle_fn=self._backend_name == "process",
            timeout=timeout,
        )
        run.prime()
        return run.results()

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stop accepting tasks; with ``wait``, return once every running and queued task
        is done and the workers have exited. ``cancel_futures`` cancels the queued ones.
        Without ``wait``, what is left still runs, and the interpreter waits for it at exit,
        as with the standard library's executors."""
        with self._shutdown_lock:
            self._closed = True
        self._backend.shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            with _live_lock:
                _live_backends.discard(self._backend)

    def terminate(self):
        """Stop now: cancel the queued tasks and kill the workers running tasks, whose futures
        fail with :class:`BrokenPool`; return once the workers are gone.

        With ``backend="thread"`` the queued tasks are cancelled, but running ones cannot be
        stopped: they finish in the background.
        """
        with self._shutdown_lock:
            self._closed = True
        if self._backend_name == "thread":
            self._backend.shutdown(wait=False, cancel_futures=True)
            return
        self._backend.terminate(
            BrokenPool("the pool was terminated while this task ran; its worker was killed")
        )
        with _live_lock:
            _live_backends.discard(self._backend)

    def __exit__(self, exc_type, exc_val, exc_tb):
        # Leaving the block by an exception (Ctrl-C above all) stops at once rather than
        # waiting for every running and queued call: nobody is left to use their results.
        if exc_type is not None:
            self.terminate()
            return False
        try:
            self.shutdown(wait=True)
        except BaseException:  # Ctrl-C while waiting for the block's work: stop now
            self.terminate()
            raise
        return False

    def __repr__(self):
        state = "shut down" if self._closed else "open"
        return f"<pardo.Pool jobs={self.jobs} backend={self._backend_name!r} {state}>"


def _forget(backend):
    with _live_lock:
        _live_backends.discard(backend)


def _finalize(backend):
    backend.shutdown(wait=False)


def _thread_cannot(name):
    return (
        f"backend='thread' cannot honour {name}: a thread cannot be killed or isolated; "
        f"use backend='process'"
    )


