"""pardo.Pool: Python callables on every core, each task with its own deadline.

```
 Pool.submit / schedule ──► WorkItem (1 call) + Future ──┐
 Pool.map ──► _MapRun: pulls the iterables lazily, cuts  ├─► backend ─► settle into
              them into WorkItems of many calls ─────────┘   │          Future / _MapRun
                                            process: _pool_process; thread: _pool_thread
```

- :class:`Pool` validates, builds WorkItems, and owns the public contract
  (``concurrent.futures.Executor``). Everything that runs tasks sits behind the backend
  interface: ``put_many(items)``, ``shutdown(wait, cancel_futures)``, ``terminate(reason)``,
  ``batch_hint()``.
- :class:`_MapRun` is one ``map`` call: it keeps at most a window of calls in flight
  (enough to keep every worker's batches full), in chunks as long as the backend's current
  batch size, collects outcomes behind one condition variable, and yields them in order
  (or as they complete with ``ordered=False``).
- A pool still open at interpreter exit is terminated there (queued tasks cancelled,
  workers killed), so a forgotten pool neither hangs the exit nor leaves processes behind.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import itertools
import os
import threading
import time
import weakref

from . import _channel, _shm
from ._errors import PardoError
from ._pool_items import (
    FUTURE_SINK,
    MAX_CHUNK,
    WHOLE_CHUNK,
    WorkItem,
    decode_error,
    decode_value,
)

__all__ = ["Pool", "BrokenPool", "progress", "releases_gil"]

_POOL_DEFAULT = object()  # "use the pool's task_timeout"
_BACKENDS = ("process", "thread")


class BrokenPool(PardoError, concurrent.futures.process.BrokenProcessPool):
    """The pool cannot run tasks any more (its initializer failed, or its workers cannot
    start). Every queued task fails with it, and so does every later submit."""


def progress(value=None) -> bool:
    """Send ``value`` from the running pool task to the parent's ``on_progress`` callback.

    Call it from inside a task, as often as useful; each call is delivered in order, promptly
    (a worker process writes it at once). Outside a pool task it does nothing, so a function
    that reports progress runs unchanged on its own.

    Returns:
        True if the value was sent, False when not running inside a pool task.
    """
    return _channel.emit(value)


def _default_jobs() -> int:
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
        raise ValueError(f"{what} must be > 0 seconds, got {value!r}")
    return max(1, int(value * 1e9))


_live_backends = set()
_live_lock = threading.Lock()


def _terminate_live_pools():
    """At interpreter exit: stop every pool nobody shut down (no hang, no survivors)."""
    with _live_lock:
        backends = list(_live_backends)
        _live_backends.clear()
    reason = BrokenPool("the interpreter exited while this task ran; its worker was killed")
    for backend in backends:
        backend.terminate(reason)


# Runs before threading joins non-daemon threads and before the engine's own exit handler.
threading._register_atexit(_terminate_live_pools)


class Pool(concurrent.futures.Executor):
    """Runs Python callables in parallel, on every core, each task with its own deadline.

    A ``concurrent.futures.Executor``: ``submit``, ``map``, ``shutdown`` and the
    ``with`` statement behave as in the standard library, and ``as_completed``/``wait``
    work on its futures.

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
        backend: ``"process"`` or ``"thread"``.
        max_tasks_per_child: replace a worker process after it ran this many tasks.
        initializer, initargs: ``initializer(*initargs)`` runs once in every worker; if it
            raises, the pool is broken (:class:`BrokenPool`).
        kill_grace: seconds between SIGTERM and SIGKILL when a deadline kills a worker tree.
        memory_limit: per-worker memory limit (bytes or "512M"), where isolation allows.
        nice: niceness of the worker processes.
        on_progress: default callback for values tasks send with :func:`pardo.progress`;
            it runs on the pool's manager thread, so keep it short.
    """

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
            jobs = _default_jobs()
        if isinstance(jobs, bool) or not isinstance(jobs, int):
            raise TypeError(f"jobs must be an int or None, not {type(jobs).__name__}")
        if jobs <= 0:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if max_tasks_per_child is not None and (
            not isinstance(max_tasks_per_child, int) or max_tasks_per_child <= 0
        ):
            raise ValueError(f"max_tasks_per_child must be a positive int, got {max_tasks_per_child!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        self._timeout_ns = _timeout_ns(task_timeout, "task_timeout")
        if memory_limit is not None:
            from ._run import parse_size

            parse_size(memory_limit)  # a bad size fails here, not at the first task
        self._backend_name = backend
        if backend == "thread":
            for name, value in (
                ("task_timeout", task_timeout),
                ("max_tasks_per_child", max_tasks_per_child),
                ("memory_limit", memory_limit),
                ("nice", nice),
            ):
                if value is not None:
                    raise ValueError(_thread_cannot(name))
            from ._pool_thread import ThreadBackend

            self._backend = ThreadBackend(
                jobs, initializer=initializer, initargs=initargs, broken_error=BrokenPool
            )
        else:
            from ._pool_process import ProcessBackend

            self._backend = ProcessBackend(
                jobs,
                initializer=initializer,
                initargs=initargs,
                max_tasks_per_child=max_tasks_per_child,
                kill_grace=kill_grace,
                memory_limit=memory_limit,
                nice=nice,
                broken_error=BrokenPool,
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
            raise ValueError(_thread_cannot(what))
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
        return self._schedule(fn, tuple(args), dict(kwargs or {}), tns, on_progress or self._on_progress)

    def _schedule(self, fn, args, kwargs, timeout_ns, on_progress):
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        fut = concurrent.futures.Future()
        item = WorkItem(fn, [args], [kwargs] if kwargs else None, timeout_ns, FUTURE_SINK, fut, 0, on_progress)
        with self._shutdown_lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._backend.put_many((item,))
        return fut

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
                raise ValueError(
                    f"chunksize must be 'auto' or an int from 1 to {WHOLE_CHUNK - 1}, got {chunksize!r}"
                )
        else:
            chunksize = None
        tns = self._task_timeout(task_timeout, "task_timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        total = None
        try:
            total = min(len(it) for it in iterables) if iterables else 0
        except TypeError:
            pass
        bar = None
        if progress:
            from ._pool_progress import open_bar

            bar = open_bar(total, getattr(fn, "__name__", "tasks"))
        run = _MapRun(
            self,
            fn,
            zip(*iterables),
            tns,
            ordered,
            chunksize,
            on_progress or self._on_progress,
            deadline,
            bar,
        )
        run.prime()
        return run.results()

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stop accepting tasks; with ``wait``, return once every running and queued task
        is done and the workers have exited. ``cancel_futures`` cancels the queued ones."""
        with self._shutdown_lock:
            self._closed = True
        self._backend.shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            with _live_lock:
                _live_backends.discard(self._backend)

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


class _MapRun:
    """The sink of one ``Pool.map`` call (interface in :class:`pardo._pool_items.FutureSink`).

    Outcomes are stored by the map position of their first call, as
    ``(kind, data, where, n)`` covering ``n`` calls: kind 0 one plain value (thread
    backend), 1 a pickled list of values, 2 a list of per-call ``(ok, payload)``, 3 an
    exception. Re-sent parts of a chunk get their own entries, so entries always tile the
    positions; the consumer walks them in order (or in arrival order, unordered).
    """

    MIN_WINDOW = 256

    def __init__(self, pool, fn, iterator, timeout_ns, ordered, chunksize, on_progress, deadline, bar):
        self._pool = pool
        self._backend = pool._backend
        self.fn = fn
        self._iterator = iterator
        self._timeout_ns = timeout_ns
        self._ordered = ordered
        self._chunksize = chunksize
        self._on_progress = on_progress
        self._deadline = deadline
        self._bar = bar
        self._cond = threading.Condition(threading.Lock())
        self._done = {} if ordered else collections.deque()
        self._n_settled = 0
        self.closed = False
        self._submitted = 0
        self._yielded = 0
        self._exhausted = False
        self._fn_payload = None
        if pool._backend_name == "process":
            # Pickle the callable once for the whole map, and fail early if it cannot be.
            self._fn_payload = _shm.dumps(fn)

    # sink interface (called by the backend)

    def claim(self, item) -> bool:
        return not self.closed

    def _store(self, index, outcome):
        if self._ordered:
            self._done[index] = outcome
        else:
            self._done.append(outcome)
        self._n_settled += outcome[3]  # only for the bar: a lost update costs nothing

    def settle_chunk(self, item, offset, n, mode, data, where):
        self._store(item.index + offset, (1 if mode == 0 else 2, data, where, n))

    def settle(self, item, offset, value):
        self._store(item.index + offset, (0, value, None, 1))

    def fail(self, item, offset, exc):
        self._store(item.index + offset, (3, exc, None, 1))

    def fail_rest(self, item, exc):
        self._store(item.index + item.reported, (3, exc, None, item.count - item.reported))

    def cancel(self, item):
        self.fail_rest(item, concurrent.futures.CancelledError())

    def notify(self):
        with self._cond:
            self._cond.notify_all()
        if self._bar is not None:
            self._bar.update(self._n_settled)

    # consumer side

    def _chunk(self) -> int:
        return self._chunksize or max(1, min(MAX_CHUNK, self._backend.batch_hint()))

    def prime(self):
        try:
            self._top_up()
        except BaseException:
            self.close()
            raise

    def _top_up(self):
        chunk = self._chunk()
        window = max(self.MIN_WINDOW, 4 * self._pool.jobs * chunk)
        room = window - (self._submitted - self._yielded)
        if room <= 0 or self._exhausted:
            return
        items = []
        tns = self._timeout_ns
        fn = self.fn
        fp = self._fn_payload
        progress_cb = self._on_progress
        index = self._submitted
        iterator = self._iterator
        islice = itertools.islice
        while room > 0:
            args = list(islice(iterator, min(chunk, room)))
            if not args:
                self._exhausted = True
                break
            item = WorkItem(fn, args, None, tns, self, None, index, progress_cb)
            item.fn_payload = fp
            items.append(item)
            index += len(args)
            room -= len(args)
        if items:
            with self._pool._shutdown_lock:
                if self._pool._closed:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                self._backend.put_many(items)
            self._submitted = index

    def _next_outcome(self):
        """Wait for the next outcome; None when every call has been yielded."""
        cond = self._cond
        done = self._done
        with cond:
            while True:
                if self._ordered:
                    outcome = done.pop(self._yielded, None)
                else:
                    outcome = done.popleft() if done else None
                if outcome is not None:
                    return outcome
                if self._exhausted and self._yielded >= self._submitted:
                    return None
                if self._deadline is None:
                    cond.wait()
                else:
                    remaining = self._deadline - time.monotonic()
                    if remaining <= 0:
                        raise concurrent.futures.TimeoutError()
                    cond.wait(remaining)

    def results(self):
        try:
            while True:
                outcome = self._next_outcome()
                if outcome is None:
                    return
                kind, data, where, n = outcome
                outcome = None
                self._yielded += n
                if not self._exhausted and self._submitted - self._yielded <= self._window_low():
                    self._top_up()
                # Hand each value over without keeping a reference here (pop it straight
                # into the yield): once the caller drops a result, it is freed.
                if kind == 1:
                    ok, values = decode_value(data, where)
                    data = None
                    if not ok:
                        raise values
                    values.reverse()
                    while values:
                        yield values.pop()
                elif kind == 0:
                    box = [data]
                    data = None
                    yield box.pop()
                elif kind == 2:
                    data.reverse()
                    while data:
                        ok, payload = data.pop()
                        if not ok:
                            raise decode_error(payload, where)
                        ok, value = decode_value(payload, where)
                        payload = None
                        if not ok:
                            raise value
                        box = [value]
                        value = None
                        yield box.pop()
                else:
                    raise data
        finally:
            self.close()

    def _window_low(self) -> int:
        return max(self.MIN_WINDOW, 4 * self._pool.jobs * self._chunk()) // 2

    def close(self):
        """Stop: calls not yet dispatched are dropped, results not yet taken released."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.update(self._n_settled)
            self._bar.close()
        with self._cond:
            leftovers = list(self._done.values() if self._ordered else self._done)
            self._done.clear()
        for kind, data, _, _ in leftovers:
            if kind == 1:
                _release(data)
            elif kind == 2:
                for _, payload in data:
                    _release(payload)


def _release(payload):
    for name in _shm.payload_files(payload):
        _shm.unlink(name)


class GilVerdict:
    """What :func:`releases_gil` measured. True in a boolean context when the callable
    scaled on threads well enough for ``backend="thread"``."""

    def __init__(self, fn, threads, serial_s, parallel_s):
        self.fn = fn
        self.threads = threads
        self.serial_s = serial_s
        self.parallel_s = parallel_s
        self.speedup = serial_s / parallel_s if parallel_s > 0 else float("inf")
        # Half of the ideal gain: a callable that holds the GIL stays near 1.0x.
        self.releases = self.speedup >= 1 + 0.5 * (threads - 1)

    def __bool__(self):
        return self.releases

    def __repr__(self):
        return (
            f"GilVerdict(releases={self.releases}, speedup={self.speedup:.2f}, "
            f"threads={self.threads})"
        )

    def __str__(self):
        name = getattr(self.fn, "__name__", None) or repr(self.fn)
        if self.releases:
            advice = "it releases the GIL: backend='thread' suits it"
        else:
            advice = "it holds the GIL: use backend='process'"
        return (
            f"{name}: {self.threads} calls took {self.serial_s:.3f} s one after the other and "
            f"{self.parallel_s:.3f} s on {self.threads} threads ({self.speedup:.2f}x); {advice}"
        )


def releases_gil(fn, *args, threads=None, repeat=3, **kwargs) -> GilVerdict:
    """Measure whether ``fn(*args, **kwargs)`` runs faster on several threads.

    Runs ``threads`` calls one after the other, then ``threads`` calls at once on as many
    threads, ``repeat`` times each, and compares the best times. Choose a call that takes
    tens of milliseconds: shorter ones drown in thread start-up noise.

    Args:
        threads: how many threads (default: CPUs available, at least 2).

    Returns:
        A :class:`GilVerdict`; ``bool(verdict)`` says whether ``backend="thread"`` suits
        ``fn``, ``str(verdict)`` says so in a sentence.
    """
    if threads is None:
        threads = max(2, _default_jobs())
    if threads < 2:
        raise ValueError("releases_gil needs at least 2 threads to compare")
    fn(*args, **kwargs)  # warm up: imports, caches, first-call costs

    def serial():
        t0 = time.perf_counter()
        for _ in range(threads):
            fn(*args, **kwargs)
        return time.perf_counter() - t0

    def parallel():
        barrier = threading.Barrier(threads + 1)
        errors = []

        def run():
            barrier.wait()
            try:
                fn(*args, **kwargs)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for t in workers:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in workers:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return elapsed

    best_serial = min(serial() for _ in range(repeat))
    best_parallel = min(parallel() for _ in range(repeat))
    return GilVerdict(fn, threads, best_serial, best_parallel)
