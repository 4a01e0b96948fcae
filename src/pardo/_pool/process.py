"""Process backend of pardo.Pool: worker processes started and watched by the engine.

```
 caller threads                 manager thread (one per pool)             worker processes
 submit()/map() ──► _pending ─► _dispatch: batch of chunks ─► task pipe ─► per call k:
  (WorkItem =       (deque,     per worker, each chunk's     (per worker,   watch record =
   chunk of calls)   _lock)     args pickled once; frame,    non-blocking)  (deadline, k)
                     eventfd ─► non-blocking write; watch                   fn(*args) ...
                                the worker's record
 futures / map runs ◄── settle ◄── _on_results: decode ◄── result pipe ◄── results in parts,
                                   frames                                 progress values
 engine (native thread) ── kills a worker whose watch deadline passed; its Task completes
                          into the ResultQueue whose fd the manager selects on ─► _on_death
```

- **Caller threads** append WorkItems to ``_pending`` under ``_lock`` and wake the manager
  through an eventfd (at most one wake-up in flight). Calls that idle workers will take
  are claimed (their futures set running) right there, so that they count as started
  before the manager gets the GIL. A WorkItem is a *chunk*: one call for ``submit``, as
  many as the current batch size for ``map`` — arguments and results cross the pipes as
  one pickle per chunk, which is what makes tiny tasks cheap.
- **The manager thread** owns everything else: the workers (``worker_process.py``: their pipes,
  in-flight tables and watch records), batching and fault handling. It blocks in ``select``
  on the result pipes, the eventfd and the engine's ResultQueue; writes to task pipes are
  non-blocking, so a worker that stops reading can never stall it.
- **A worker** (``worker.py``) runs the calls of a chunk one by one, writing its watch
  record in the shared mapping around each call (layout in ``wire.py``): the call's own seq
  and, with a deadline, the absolute time it must end by.
- **The engine** reads the watch record of every worker that has a call with a deadline in
  flight (``Task.watch``) and kills the worker's whole tree once that deadline passes —
  natively, so a call stuck in C holding the GIL dies on time. The manager learns of any
  death from the ResultQueue, fails the call the record names (TaskTimeout or
  TaskCrashed), re-queues the worker's other unfinished calls at the front (no suspects:
  they never started there), and starts a fresh worker in its place. Only a death the
  record names no call for charges them a try. A death while a chunk was (un)pickled as a
  whole re-sends its calls one by one, so that a second death names the culprit.
"""

from __future__ import annotations

import collections
import itertools
import mmap
import multiprocessing
import os
import pickle
import secrets
import selectors
import sys
import threading
import time

from .._errors import BrokenPool, TaskCrashed
from .._run import ResultQueue
from . import shm, wire
from .failures import (
    death_error,
    decode_error,
    describe_call,
    detach,
    pickling_error,
    report_callback_error,
)
from .items import (
    ELEMENT_BITS,
    WHOLE_CHUNK,
    BatchSizer,
    cancel_items,
    check_open,
    release_payload,
)
from .worker_process import READ, WRITE, WorkerProcess, worker_env

# A call that sits queued on this many workers whose deaths name no culprit (so that it
# may be the one killing them) fails rather than being retried forever.
MAX_TRIES = 3
# Workers that die before reporting READY this many times in a row break the pool:
# the interpreter cannot start, an import fails, the machine is out of memory...
MAX_START_FAILURES = 3
# How often the engine re-reads an idle watch record (no call with a deadline running). A
# deadline longer than this is met exactly; a shorter one may be late by up to this much.
IDLE_RECHECK = 0.005

# Selector events of the manager's own fds (workers' pipes use workers.READ and WRITE).
_WAKE, _DEATHS = 3, 4
# WorkItem.claimed of a call put_many claimed for an idle worker, until the manager takes it
# from the queue (truthy, as claimed items are).
CLAIMED_AT_SUBMIT = 2


class ProcessBackend:
    """Runs WorkItems in worker processes. Thread-safe entry points: :meth:`put_many`,
    :meth:`shutdown`, :meth:`terminate`, :meth:`batch_hint`."""

    def __init__(
        self,
        jobs: int,
        *,
        initializer=None,
        initargs=(),
        max_tasks_per_child=None,
        kill_grace=0.5,
        memory_limit=None,
        nice=None,
    ):
        self.jobs = jobs
        self._max_tasks = max_tasks_per_child
        self._kill_grace = kill_grace
        self._memory_limit = memory_limit
        self._nice = nice
        self.on_done = None  # called with this backend once it has stopped for good
        self._init_payload = None
        if initializer is not None:
            self._init_payload = shm.dumps((initializer, tuple(initargs)))

        # _lock guards what caller threads share with the manager thread, and nothing else:
        #   _pending      WorkItems not yet sent to a worker (callers append at the back,
        #                 the manager takes from the front and puts re-sends back there)
        #   _wake_armed   a wake-up is in flight on _wake_fd (one is enough)
        #   _wake_fd      None once the manager closed it: no caller writes to it after
        #   _thread       the manager, started by the first put_many
        #   _shutdown, _terminating, _broken   written under it; the manager thread also
        #                 reads them without it, where a stale value only costs a loop round
        # It is held for these few operations only (and the manager's start-up), never
        # while waiting or while calling into a sink, a callback or a worker, so a worker
        # that dies cannot leave it taken. Everything else belongs to the manager thread.
        self._lock = threading.Lock()
        self._pending = collections.deque()
        # Calls on workers (pipe or running), kept by the manager; put_many reads it without
        # the lock, as an estimate of how many workers are idle.
        self._load_total = 0
        self._claimed_pending = 0  # queued calls claimed by put_many (under _lock)
        self._wake_armed = False
        self._shutdown = False
        self._terminating = False  # the exception running calls fail with, once terminated
        self._broken = None  # the exception new work fails with once the pool is broken
        self._thread = None
        self._wake_fd = None

        self.token = f"pardo-{os.getpid()}-{secrets.token_hex(4)}"
        self._arena = shm.BufferArena(self.token + "-p")
        self._sizer = BatchSizer()
        self._seq = itertools.count(1)
        self._fn_cache = {}  # id(fn) -> (fn, payload), valid for one dispatch round
        self._touched = set()  # sinks settled this round: notified once at its end
        self._start_failures = 0
        self._workers = [None] * jobs
        self._env = None
        self._by_task = {}  # engine task id -> WorkerProcess
        self._sel = None
        self._queue = None  # the engine's ResultQueue: worker deaths
        self._watch_fd = None  # memfd of the watch records, one per worker
        self._watch_map = None

    # -- caller side -------------------------------------------------------------------

    def put_many(self, items) -> None:
        """Queue items (FIFO). Raises the pool's broken error if it is broken."""
        with self._lock:
            check_open(self._broken, self._shutdown)
            if self._claimed_pending + self._load_total < self.jobs:
                self._claim_for_idle(items)
            self._pending.extend(items)
            if self._thread is None:
                self._start()
            self._wake_locked()

    def _claim_for_idle(self, items):
        """Under _lock: mark as running the submitted calls idle workers will take.

        Only the manager thread hands calls to workers, and it needs the GIL the caller
        holds: a call given to an idle pool would otherwise still count as queued when the
        caller goes straight on to ``shutdown(cancel_futures=True)``, and be cancelled.
        The standard library's executors run such calls; so does this.
        """
        free = self.jobs - self._claimed_pending - self._load_total
        for item in items:
            if free <= 0:
                return
            if item.future is not None and not item.claimed and item.sink.claim(item):
                item.claimed = CLAIMED_AT_SUBMIT
                self._claimed_pending += 1
                free -= 1

    def batch_hint(self) -> int:
        """Tasks per batch at the moment (map runs size their window from it)."""
        return self._sizer.size()

    def shutdown(self, wait=True, cancel_futures=False) -> None:
        self._stop(cancel=cancel_futures, reason=None, join=wait, join_timeout=None)

    def terminate(self, reason: BaseException, join_timeout=10.0) -> None:
        """Stop now: cancel what is queued, kill the workers, fail what was running."""
        self._stop(cancel=True, reason=reason, join=True, join_timeout=join_timeout)

    def _stop(self, *, cancel, reason, join, join_timeout) -> None:
        failed = ()
        with self._lock:
            self._shutdown = True
            if reason is not None:
                self._terminating = reason
            cancelled = self._take_pending() if cancel else ()
            if cancelled:
                # A call already running (claimed for an idle worker, or re-queued after a
                # death) cannot be cancelled: it runs, unless the pool is being killed.
                started = [i for i in cancelled if i.future is not None and i.claimed]
                if started:
                    cancelled = [i for i in cancelled if not (i.future is not None and i.claimed)]
                    if reason is None:
                        self._pending.extend(started)
                        self._claimed_pending = sum(i.claimed == CLAIMED_AT_SUBMIT for i in started)
                    else:
                        failed = started
            thread = self._thread
        for item in failed:
            item.sink.fail_rest(item, reason)
        cancel_items(cancelled)
        if thread is None:
            self._close_resources()
            if self.on_done is not None:
                self.on_done(self)
            return
        self._wake()
        if join and thread is not threading.current_thread():
            thread.join(join_timeout)

    def _take_pending(self):
        items = list(self._pending)
        self._pending.clear()
        self._claimed_pending = 0
        return items

    def _wake(self):
        with self._lock:
            self._wake_locked()

    def _wake_locked(self):
        # Under _lock, as the close of the fd is: the manager thread may be closing it
        # right now (a pool that broke), and a write to a closed fd number could land in
        # whatever file took the number meanwhile.
        if not self._wake_armed and self._wake_fd is not None:
            os.eventfd_write(self._wake_fd, 1)
        self._wake_armed = True

    # -- manager thread ------------------------------------------------------------------

    def _start(self):
        """Called under _lock by the first put_many."""
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        size = max(mmap.PAGESIZE, self.jobs * wire.WATCH_RECORD_SIZE)
        self._watch_fd = os.memfd_create("pardo-pool-watch", os.MFD_CLOEXEC)
        os.ftruncate(self._watch_fd, size)
        self._watch_map = mmap.mmap(self._watch_fd, size)
        self._queue = ResultQueue()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_fd, selectors.EVENT_READ, (_WAKE, None))
        self._sel.register(self._queue.fileno(), selectors.EVENT_READ, (_DEATHS, None))
        self._thread = threading.Thread(target=self._manage, name="pardo-pool-manager", daemon=True)
        self._thread.start()

    def _manage(self):
        try:
            for i in range(self.jobs):
                self._spawn(i)
            while not self._finished():
                for key, _ in self._sel.select():
                    kind, w = key.data
                    if kind == READ:
                        if not w.dead:  # else its death was handled earlier this round
                            self._handle_messages(w, w.read())
                    elif kind == WRITE:
                        w.flush()
                    elif kind == _WAKE:
                        self._on_wake()
                    else:
                        self._on_deaths()
                if self._terminating:
                    self._kill_all()
                elif self._broken is None:
                    self._dispatch()
                self._notify()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            report_callback_error("the pool manager thread", exc)
            self._break(BrokenPool(f"the pool's manager thread failed: {exc!r}"))
            self._kill_all()
        finally:
            self._notify()
            self._close_resources()
            if self.on_done is not None:
                self.on_done(self)

    def _finished(self) -> bool:
        if not self._shutdown and self._broken is None:
            return False
        with self._lock:
            if self._pending and self._broken is None and not self._terminating:
                return False
        alive = [w for w in self._workers if w is not None]
        if any(w.inflight for w in alive) and not self._terminating:
            return False
        # Nothing left to do: let the workers run out of input, then wait for their deaths.
        for w in alive:
            w.close_input()
        return not alive

    def _on_wake(self):
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        with self._lock:
            self._wake_armed = False

    def _spawn(self, index):
        if self._env is None:
            self._env = worker_env()
        w = WorkerProcess(index, self._sel)
        w.start(self._watch_map, self._watch_fd, self._queue, self.token, self._env,
                kill_grace=self._kill_grace, memory_limit=self._memory_limit, nice=self._nice)
        self._workers[index] = w
        self._by_task[w.task.id] = w
        # The parent's multiprocessing key, so that Manager proxies passed to tasks can
        # connect back, as in multiprocessing's own children. Over the pipe: neither argv
        # nor the environment, which processes a task starts would see.
        authkey = bytes(multiprocessing.current_process().authkey)
        w.send((wire.INIT, list(sys.path), self._init_payload, authkey))

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self):
        self._fn_cache.clear()
        live = [w for w in self._workers if w is not None and not w.retiring and not w.wfd_closed]
        if not live:
            return
        size = self._sizer.size()
        progress = True
        while progress:
            progress = False
            with self._lock:
                npending = len(self._pending)
            if not npending:
                break
            # Spread the tail evenly instead of handing it all to the first worker (counted
            # in chunks here, as that is all the queue length tells).
            share = min(size, max(1, -(-npending // len(live))))
            # Top a worker up while it has less than one batch left, so that the next batch
            # is in its pipe before it runs dry — for slow calls too (one running, one
            # queued), unless the queue is down to its tail, which goes to whoever is free.
            cap = max(2, share) if npending > len(live) else share
            for w in live:
                if w.load < cap and not w.retiring:
                    if self._send_batch(w, share):
                        progress = True
        self._fn_cache.clear()

    def _send_batch(self, w, n) -> bool:
        if self._max_tasks:
            n = min(n, self._max_tasks - w.assigned)
        items = []
        calls = 0
        with self._lock:
            pending = self._pending
            while pending and calls < n:
                item = pending.popleft()
                if item.claimed == CLAIMED_AT_SUBMIT:
                    item.claimed = True
                    self._claimed_pending -= 1
                if self._max_tasks and calls + item.count > n:
                    # This worker may run only n more calls: split the chunk.
                    release_payload(item)
                    pending.appendleft(item.part(n - calls, item.count))
                    item = item.part(0, n - calls)
                items.append(item)
                calls += item.count
        if not items:
            return False
        fn_index = {}
        fns = []
        chunks = []
        inflight = w.inflight
        deadline_used = False
        sent = 0
        for item in items:
            if not item.claimed:
                if not item.sink.claim(item):
                    continue
                item.claimed = True
            payload = item.payload
            if payload is None:
                payload = self._encode_args(item)
                if payload is None:
                    continue
            fp = item.fn_payload
            if fp is None:
                fp = self._encode_fn(item)
                if fp is None:
                    continue
            fi = fn_index.get(id(fp))
            if fi is None:
                fi = fn_index[id(fp)] = len(fns)
                fns.append(fp)
            seq = next(self._seq)
            inflight[seq] = item
            chunks.append((seq, fi, payload, item.timeout_ns, item.count))
            sent += item.count
            if item.timeout_ns:
                deadline_used = True
        self._notify()
        if not chunks:
            return True
        w.load += sent
        self._load_total += sent
        w.assigned += sent
        if deadline_used:
            w.watch(IDLE_RECHECK)
        if self._max_tasks and w.assigned >= self._max_tasks:
            w.retiring = True  # its input closes once this batch is written
        w.send((wire.BATCH, fns, chunks))
        return True

    def _encode_args(self, item):
        try:
            payload = shm.dumps((item.args, item.kwargs), self._arena)
        except BaseException as exc:  # SystemExit from a __reduce__: this call's error
            detach(exc)
            if item.count > 1:
                # Some call's arguments cannot be pickled: send each call on its own, so
                # that exactly the offending ones fail.
                self._requeue_front([item.part(i, i + 1) for i in range(item.count)])
            else:
                item.sink.fail(item, 0, pickling_error(item, exc))
                self._touched.add(item.sink)
            return None
        item.payload = payload
        return payload

    def _encode_fn(self, item):
        fn = item.fn
        hit = self._fn_cache.get(id(fn))
        if hit is not None and hit[0] is fn:
            return hit[1]
        try:
            fp = shm.dumps(fn)
        except BaseException as exc:
            detach(exc)
            err = pickle.PicklingError(
                f"the callable {fn!r} cannot be pickled to send it to a worker: "
                f"{type(exc).__name__}: {exc}"
            )
            err.__cause__ = exc
            item.sink.fail_rest(item, err)
            self._touched.add(item.sink)
            return None
        self._fn_cache[id(fn)] = (fn, fp)
        return fp

    def _requeue_front(self, items):
        with self._lock:
            self._pending.extendleft(reversed(items))

    # -- results -------------------------------------------------------------------------

    def _handle_messages(self, w, messages):
        for msg in messages:
            kind = msg[0]
            if kind == wire.RESULTS:
                self._on_results(w, msg[1], msg[2], msg[3])
            elif kind == wire.PROGRESS:
                self._on_progress(w, msg[1], msg[2])
            elif kind == wire.READY:
                w.ready = True
                w.pid = msg[1]
                w.where = f"worker pid {msg[1]} on {msg[2]}"
                self._start_failures = 0
            elif kind == wire.INIT_FAILED:
                cause = decode_error(msg[1], w.where)
                err = BrokenPool(f"the pool's initializer failed in {w.where}: {cause}")
                err.__cause__ = cause
                self._break(err)

    def _on_results(self, w, entries, busy_ns, calls):
        inflight = w.inflight
        touched = self._touched
        where = w.where
        for seq, offset, n, mode, data in entries:
            item = inflight.get(seq)
            if item is None:
                continue
            if mode == wire.SPLIT:
                del inflight[seq]
                w.load -= item.count - item.reported
                self._load_total -= item.count - item.reported
                if item.count == 1:
                    item.sink.fail(item, 0, decode_error(data, where))
                    touched.add(item.sink)
                    release_payload(item)
                else:
                    release_payload(item)
                    self._requeue_front([item.part(i, i + 1) for i in range(item.count)])
                continue
            item.sink.settle_chunk(item, offset, n, mode, data, where)
            touched.add(item.sink)
            item.reported = offset + n
            w.load -= n
            self._load_total -= n
            if item.reported >= item.count:
                del inflight[seq]
                if type(item.payload) is not bytes:
                    release_payload(item)
        self._sizer.observe(busy_ns, calls)
        if not inflight:
            w.unwatch()
            if w.retiring:
                w.close_input()

    def _on_progress(self, w, seq, payload):
        item = w.inflight.get(seq >> ELEMENT_BITS)
        try:
            value = shm.loads(payload, unlink_after=True)
        except BaseException as exc:  # this thread must outlive any __reduce__
            report_callback_error("unpickling a progress value", exc)
            return
        callback = item.on_progress if item is not None else None
        if callback is None:
            return
        try:
            callback(value)
        except BaseException as exc:  # a SystemExit there must not end the manager thread
            report_callback_error(f"the on_progress callback {callback!r}", exc)

    def _notify(self):
        touched = self._touched
        while touched:
            touched.pop().notify()

    # -- deaths --------------------------------------------------------------------------

    def _on_deaths(self):
        try:
            tasks = self._queue.get_many(1024, timeout=0)
        except (TimeoutError, RuntimeError):  # RuntimeError: nothing in flight
            return
        for task in tasks:
            w = self._by_task.pop(task.id, None)
            if w is not None:
                self._on_death(w, task.result)

    def _on_death(self, w, result):
        self._handle_messages(w, w.read_to_end())
        if not w.wfd_closed:
            w.outbuf.clear()
            w.close_input()
        w.dead = True
        w.watched = False
        w.watch_view.release()  # the engine stopped reading it when the worker died
        self._workers[w.index] = None
        base = w.index * wire.WATCH_RECORD_SIZE
        record = memoryview(self._watch_map)[base: base + wire.WATCH_RECORD_SIZE].cast("q")
        deadline_ns = record[wire.WATCH_DEADLINE]
        watch_seq = record[wire.WATCH_SEQ]
        running = record[wire.WATCH_RUNNING]
        record.release()
        status = str(result.status)
        seen_ns = time.monotonic_ns()
        shm.sweep(f"{self.token}-w{result.pid or w.pid}-")

        if status == "timeout":
            blame = result.watch_seq or watch_seq
        elif status == "cancelled":
            blame = 0  # we killed it (terminate); nobody is to blame
        else:
            blame = running
        item = w.inflight.pop(blame >> ELEMENT_BITS, None) if blame else None
        again = []
        if item is not None:
            offset = blame & WHOLE_CHUNK
            left = item.count - item.reported
            if offset == WHOLE_CHUNK and left > 1:
                # It died (un)pickling the chunk as a whole: run each call on its own, so
                # that if it happens again the call to blame is known.
                again += [item.part(i, i + 1) for i in range(item.reported, item.count)]
            else:
                if offset == WHOLE_CHUNK:
                    offset = item.reported
                err = death_error(result, status, item, result.pid or w.pid, deadline_ns, seen_ns)
                item.sink.fail(item, offset, err)
                self._touched.add(item.sink)
                # Calls before it whose results had not been sent yet run again.
                if offset > item.reported:
                    again.append(item.part(item.reported, offset))
                if offset + 1 < item.count:
                    again.append(item.part(offset + 1, item.count))
            release_payload(item)
        self._requeue(w, result, again, culprit_known=item is not None)

        if self._broken is not None or self._terminating:
            return
        if not w.ready and status != "ok":
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._break(BrokenPool(
                    f"{self._start_failures} pool workers in a row died before they were "
                    f"ready (last: {result.describe()}); see their stderr above"
                ))
                return
        if not self._shutdown or self._pending_or_inflight():
            self._spawn(w.index)

    def _pending_or_inflight(self):
        with self._lock:
            if self._pending:
                return True
        return any(w is not None and w.inflight for w in self._workers)

    def _requeue(self, w, result, again, culprit_known):
        """Put a dead worker's unfinished calls back at the front, in order.

        The calls still in ``w.inflight`` never started on it when the watch record named the
        call (or chunk) that was running: they are not suspects and are charged no try,
        however many deaths they sit through. Only a death nothing names (the worker
        killed from outside between calls, say) charges each of them one.
        """
        suspects = w.ready and not culprit_known  # a worker never ready ran nothing
        for item in w.inflight.values():
            if item.reported:
                release_payload(item)
                item = item.part(item.reported, item.count)
            if suspects:
                item.tries += 1
            again.append(item)
        w.inflight.clear()
        self._load_total -= w.load
        w.load = 0
        keep = []
        for item in again:
            if self._terminating:
                item.sink.fail_rest(item, self._terminating)
            elif item.tries >= MAX_TRIES:
                item.sink.fail_rest(
                    item,
                    TaskCrashed(
                        f"{MAX_TRIES} workers died while {describe_call(item.fn)} was queued on "
                        f"them (last: {result.describe()}); giving up on it",
                        result,
                        signal=result.signal,
                        exitcode=result.returncode,
                        pid=result.pid,
                    ),
                )
            else:
                keep.append(item)
                continue
            self._touched.add(item.sink)
            release_payload(item)
        if keep:
            self._requeue_front(keep)

    def _break(self, err):
        """The pool cannot go on: fail everything queued or running with ``err``."""
        if self._broken is None:
            with self._lock:
                self._broken = err
                items = self._take_pending()
            for w in self._workers:
                if w is not None:
                    items.extend(w.inflight.values())
                    w.inflight.clear()
                    self._load_total -= w.load
                    w.load = 0
            for item in items:
                item.sink.fail_rest(item, err)
                self._touched.add(item.sink)
                release_payload(item)
        self._kill_all()

    def _kill_all(self):
        for w in self._workers:
            if w is not None and w.task is not None:
                try:
                    w.task.kill()
                except Exception:
                    pass  # already gone

    def _close_resources(self):
        for w in self._workers:
            if w is not None:
                w.release()
        self._workers = [None] * self.jobs
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        with self._lock:
            wake_fd, self._wake_fd = self._wake_fd, None
        if wake_fd is not None:
            os.close(wake_fd)
        if self._watch_map is not None:
            self._watch_map.close()  # mmap holds its own dup of the memfd
            self._watch_map = None
        if self._watch_fd is not None:
            os.close(self._watch_fd)
            self._watch_fd = None
        self._queue = None  # its fd closes with it
        shm.sweep(self.token + "-")
