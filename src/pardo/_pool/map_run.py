"""One ``Pool.map`` call: it pulls the iterables lazily, cuts them into WorkItems as long as
the backend's current batch size, keeps a window of them in flight, and yields the outcomes
in order (or as they complete)."""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import time

from . import shm, wire
from .failures import decode_error
from .items import MAX_CHUNK, WorkItem, decode_value

# The kinds of outcome a map run stores (see MapRun).
_VALUE, _PICKLED_VALUES, _EACH, _ERROR = range(4)


class MapRun:
    """The sink of one ``Pool.map`` call (interface in :class:`items.FutureSink`).

    Outcomes are stored by the map position of their first call, as ``(kind, data, where,
    n)`` covering ``n`` calls, kind one of: ``_VALUE``, one plain value (thread backend);
    ``_PICKLED_VALUES``, a pickled list of values; ``_EACH``, a list of per-call ``(ok,
    payload)``; ``_ERROR``, an exception. Re-sent parts of a chunk get their own entries,
    so entries always tile the positions; the consumer walks them in order (or in arrival
    order, unordered).

    Args:
        submit: ``submit(items)`` hands WorkItems to the pool (raises once it is shut down).
        backend: the pool's backend (its batch size sets the chunk length).
        jobs: the pool's number of workers.
        pickle_fn: pickle ``fn`` once for the whole map (the process backend).
        timeout: seconds from now to wait for each next result, or None.
        clock: the monotonic clock of ``timeout``.
    """

    MIN_WINDOW = 256

    def __init__(self, submit, backend, jobs, fn, iterator, timeout_ns, ordered, chunksize,
                 on_progress, bar, *, pickle_fn, timeout=None, clock=time.monotonic):
        self._submit = submit
        self._backend = backend
        self._jobs = jobs
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self.fn = fn
        self._iterator = iterator
        self._timeout_ns = timeout_ns
        self._ordered = ordered
        self._chunksize = chunksize
        self._on_progress = on_progress
        self._bar = bar
        self._cond = threading.Condition(threading.Lock())
        self._done = {} if ordered else collections.deque()
        self._n_settled = 0
        self.closed = False
        self._submitted = 0
        self._yielded = 0
        self._exhausted = False
        # Pickled once for the whole map, which fails here at once if it cannot be.
        self._fn_payload = shm.dumps(fn) if pickle_fn else None

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
        kind = _PICKLED_VALUES if mode == wire.OK_LIST else _EACH
        self._store(item.index + offset, (kind, data, where, n))

    def settle(self, item, offset, value):
        self._store(item.index + offset, (_VALUE, value, None, 1))

    def fail(self, item, offset, exc):
        self._store(item.index + offset, (_ERROR, exc, None, 1))

    def fail_rest(self, item, exc):
        self._store(item.index + item.reported, (_ERROR, exc, None, item.count - item.reported))

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
        window = max(self.MIN_WINDOW, 4 * self._jobs * chunk)
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
            self._submit(items)
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
                    remaining = self._deadline - self._clock()
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
                if kind == _PICKLED_VALUES:
                    ok, values = decode_value(data, where)
                    data = None
                    if not ok:
                        raise values
                    values.reverse()
                    while values:
                        yield values.pop()
                elif kind == _VALUE:
                    box = [data]
                    data = None
                    yield box.pop()
                elif kind == _EACH:
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
        return max(self.MIN_WINDOW, 4 * self._jobs * self._chunk()) // 2

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
            if kind == _PICKLED_VALUES:
                shm.release(data)
            elif kind == _EACH:
                for _, payload in data:
                    shm.release(payload)
