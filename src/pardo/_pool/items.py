"""The units both pool backends pass around: a :class:`WorkItem` per chunk of calls, the
*sink* that receives their outcomes, and the :class:`BatchSizer` that sizes chunks.

Two kinds of sink. :class:`FutureSink` settles a ``concurrent.futures.Future`` (``submit``,
``schedule``). A map run (:class:`pardo._pool.map_run.MapRun`) collects many outcomes behind one
condition variable, so that a map of 100,000 tiny tasks pays for neither 100,000 futures nor
100,000 wake-ups. The process backend hands a sink *encoded* outcomes (pickled bytes):
futures decode them at once, map runs leave the decoding to the consuming thread.
"""

from __future__ import annotations

import pickle

from . import shm, wire
from .failures import decode_error, detach, reraise_interrupt

# A call inside a chunk is known by (chunk seq << ELEMENT_BITS) | offset: that is the seq a
# worker writes into its watch record, so a deadline or a crash names the very call to blame.
ELEMENT_BITS = 16
MAX_CHUNK = 2048  # < 2**ELEMENT_BITS - 1
WHOLE_CHUNK = (1 << ELEMENT_BITS) - 1  # offset meaning "the chunk as a whole" (pickling)


class WorkItem:
    """A chunk of calls ``fn(*args[i], **kwargs[i])`` sharing one callable and deadline.

    ``submit`` makes chunks of one call; ``map`` makes chunks as long as the current batch
    size, so that arguments and results cross the pipe as one pickle per chunk.

    Attributes:
        args: list of argument tuples, one per call (kept until the chunk is settled: a
            dead worker's unfinished calls are re-sent from it).
        kwargs: list of keyword dicts, one per call, or None when there are none.
        count: number of calls.
        index: position of the first call in its map (0 for submit).
        timeout_ns: each call's deadline, counted from its start in the worker (0 = none).
        payload: the pickled ``(args, kwargs)``, once dispatched.
        fn_payload: the pickled ``fn`` when the producer already has it (map runs).
        claimed: the sink has agreed to run it (a future moved to "running").
        reported: how many calls from the front have been settled.
        tries: how many workers died with it in flight without it being to blame.
    """

    __slots__ = (
        "fn",
        "args",
        "kwargs",
        "count",
        "timeout_ns",
        "sink",
        "future",
        "index",
        "on_progress",
        "payload",
        "fn_payload",
        "claimed",
        "reported",
        "tries",
    )

    def __init__(self, fn, args, kwargs, timeout_ns, sink, future=None, index=0, on_progress=None):
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.count = len(args)
        self.timeout_ns = timeout_ns
        self.sink = sink
        self.future = future
        self.index = index
        self.on_progress = on_progress
        self.payload = None
        self.fn_payload = None
        self.claimed = False
        self.reported = 0
        self.tries = 0

    def part(self, start, stop):
        """A new item for calls ``start:stop`` of this one (to re-send them)."""
        kw = None if self.kwargs is None else self.kwargs[start:stop]
        sub = WorkItem(self.fn, self.args[start:stop], kw, self.timeout_ns, self.sink,
                       self.future, self.index + start, self.on_progress)
        sub.fn_payload = self.fn_payload
        sub.claimed = self.claimed
        sub.tries = self.tries
        return sub


class BatchSizer:
    """Chooses how many tasks go into one batch, from how long tasks have been taking.

    Batches aim at ``target_ns`` of work: long enough that the per-batch cost (a frame, two
    pipe writes, a wake-up on each side) is noise, short enough that workers stay balanced
    and a dying worker takes little finished-but-unreported work with it. Until the first
    result arrives nothing is known, so batches start at one task.
    """

    def __init__(self, target_ns: int = 4_000_000, max_size: int = MAX_CHUNK):
        self.target_ns = target_ns
        self.max_size = max_size
        self.per_task_ns = None

    def observe(self, busy_ns: int, count: int) -> None:
        if count <= 0:
            return
        sample = busy_ns / count
        old = self.per_task_ns
        self.per_task_ns = sample if old is None else 0.7 * old + 0.3 * sample

    def size(self) -> int:
        if self.per_task_ns is None:
            return 1
        return max(1, min(self.max_size, int(self.target_ns / max(self.per_task_ns, 1.0))))


def decode_value(payload, where):
    """The value a worker sent, or an UnpicklingError for it (returned, not raised)."""
    try:
        return True, shm.loads(payload, unlink_after=True)
    except BaseException as err:
        reraise_interrupt(err)
        detach(err)
        exc = pickle.UnpicklingError(
            f"the result sent by {where} cannot be unpickled here: {type(err).__name__}: {err}"
        )
        exc.__cause__ = err
        return False, exc


class FutureSink:
    """Settles ``item.future`` (items of one call). One instance serves every future.

    The sink interface, shared with map runs (:class:`pardo._pool.map_run.MapRun`):
    ``claim(item)``; ``settle_chunk(item, offset, n, mode, data, where)`` with what a
    worker sent for calls ``offset:offset+n``; ``settle(item, offset, value)`` and
    ``fail(item, offset, exc)`` for one call; ``fail_rest(item, exc)`` for every call not
    yet settled; ``cancel(item)``; ``notify()`` once a round of settles is done.
    """

    def claim(self, item) -> bool:
        return item.future.set_running_or_notify_cancel()

    def settle_chunk(self, item, offset, n, mode, data, where):
        # Never raise here: a traceback through the manager's frames would keep the
        # whole pool alive for as long as the caller keeps the exception.
        if mode == wire.OK_LIST:
            ok, value = decode_value(data, where)
            if ok:
                value = value[0]
        else:
            ok, payload = data[0]
            if ok:
                ok, value = decode_value(payload, where)
            else:
                value = decode_error(payload, where)
        if ok:
            self.settle(item, 0, value)
        else:
            self.fail(item, 0, value)

    def settle(self, item, offset, value):
        fut = item.future
        if not fut.done():
            fut.set_result(value)

    def fail(self, item, offset, exc):
        fut = item.future
        if not fut.done():
            # A pending future (never claimed) must become running before it can fail.
            if not item.claimed and not fut.set_running_or_notify_cancel():
                return
            fut.set_exception(exc)

    def fail_rest(self, item, exc):
        self.fail(item, 0, exc)

    def cancel(self, item):
        item.future.cancel()

    def notify(self):
        pass


FUTURE_SINK = FutureSink()


def release_payload(item):
    """Remove the shared-memory files of an item's pickled arguments, and forget them."""
    shm.release(item.payload)
    item.payload = None


def check_open(broken, shutdown):
    """Raise what a submit to a backend in this state must raise (call under its lock)."""
    if broken is not None:
        from .._errors import BrokenPool

        raise BrokenPool(str(broken))
    if shutdown:
        raise RuntimeError("cannot schedule new futures after shutdown")


def cancel_items(items):
    """Cancel queued items (from a caller thread) and wake whoever waits on their sinks."""
    sinks = set()
    for item in items:
        item.sink.cancel(item)
        sinks.add(item.sink)
    for sink in sinks:
        sink.notify()
