"""Thread backend of pardo.Pool: ``jobs`` threads of this process run the tasks.

```
 submit()/map() ──► SimpleQueue of WorkItems ──► thread 1..jobs: fn(*args) ──► sink.settle
```

For callables that release the GIL (numpy, C extensions that release it, I/O) and for
free-threaded builds of CPython. A thread cannot be killed, so this backend has no per-task
deadline and no crash isolation; :func:`pardo.releases_gil` tells whether a callable gains
anything here.
"""

from __future__ import annotations

import queue
import threading

from .._errors import BrokenPool
from . import channel
from .items import check_open

_STOP = None
# WorkItem.claimed of a call put_many claimed for an idle thread, until a thread takes it.
CLAIMED_AT_SUBMIT = 2


class ThreadBackend:
    """Runs WorkItems on threads. Same entry points as the process backend."""

    def __init__(self, jobs, *, initializer=None, initargs=()):
        self.jobs = jobs
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = []
        self._shutdown = False
        self._broken = None
        self._running = 0
        self._busy = 0  # calls running or claimed for an idle thread (under _lock)
        self.on_done = None  # called with this backend once its last thread has ended

    def put_many(self, items) -> None:
        with self._lock:
            check_open(self._broken, self._shutdown)
            if not self._threads:
                for i in range(self.jobs):
                    t = threading.Thread(target=self._work, name=f"pardo-pool-thread-{i}",
                                         daemon=True)
                    self._running += 1
                    t.start()
                    self._threads.append(t)
            if self._busy < self.jobs:
                # Claim what idle threads will take: they need the GIL the caller holds to
                # take it, and a call given to an idle pool must not count as queued for a
                # shutdown(cancel_futures=True) that comes first (the stdlib runs it).
                for item in items:
                    if self._busy >= self.jobs:
                        break
                    if item.future is not None and not item.claimed and item.sink.claim(item):
                        item.claimed = CLAIMED_AT_SUBMIT
                        self._busy += 1
            put = self._queue.put
            for item in items:
                put(item)

    def _work(self):
        try:
            self._serve()
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0 and self._shutdown
            if last and self.on_done is not None:
                self.on_done(self)

    def _serve(self):
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except BaseException as exc:
                err = BrokenPool(f"the pool's initializer failed: {exc!r}")
                err.__cause__ = exc
                self._break(err)
                return
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            sink = item.sink
            if self._broken is not None:
                sink.fail_rest(item, self._broken)
                sink.notify()
                continue
            if item.claimed == CLAIMED_AT_SUBMIT:
                item.claimed = True  # counted in _busy by put_many
            else:
                if not item.claimed:
                    if not sink.claim(item):
                        continue
                    item.claimed = True
                with self._lock:
                    self._busy += 1
            fn, args, kwargs = item.fn, item.args, item.kwargs
            channel.set_thread_emitter(item.on_progress)
            try:
                for i in range(item.count):
                    try:
                        value = fn(*args[i]) if kwargs is None else fn(*args[i], **kwargs[i])
                    except BaseException as exc:
                        sink.fail(item, i, exc)
                    else:
                        sink.settle(item, i, value)
                        value = None  # the caller decides how long a result lives
            finally:
                channel.set_thread_emitter(None)
                with self._lock:
                    self._busy -= 1
            item = fn = args = kwargs = None
            sink.notify()

    def _break(self, err):
        with self._lock:
            if self._broken is None:
                self._broken = err
        self._drain(lambda item: item.sink.fail_rest(item, err))

    def _drain(self, action, keep_claimed=False):
        stops = 0
        kept = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stops += 1
                continue
            if keep_claimed and item.future is not None and item.claimed:
                kept.append(item)  # claimed for an idle thread: it runs, as if started
                continue
            action(item)
            item.sink.notify()
        for item in kept:
            self._queue.put(item)
        for _ in range(stops):
            self._queue.put(_STOP)

    def shutdown(self, wait=True, cancel_futures=False) -> None:
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            self._drain(lambda item: item.sink.cancel(item), keep_claimed=True)
        if first:
            for _ in threads:
                self._queue.put(_STOP)
            if not threads and self.on_done is not None:
                self.on_done(self)
        if wait:
            me = threading.current_thread()
            for t in threads:
                if t is not me:
                    t.join()

    def terminate(self, reason, join_timeout=10.0) -> None:
        """Cancel what is queued; running tasks cannot be killed on threads, so wait a bit."""
        self.shutdown(wait=False, cancel_futures=True)
        for t in list(self._threads):
            t.join(join_timeout / max(1, len(self._threads)))

    def batch_hint(self) -> int:
        return 1
