"""The units both pool backends pass around: a :class:`WorkItem` per task, and the *sink*
that receives its outcome.

Two kinds of sink. :class:`FutureSink` settles a ``concurrent.futures.Future`` (``submit``,
``schedule``). A map run (``pardo._pool._MapRun``) collects many outcomes behind one
condition variable, so that a map of 100,000 tiny tasks pays for neither 100,000 futures nor
100,000 wake-ups. The process backend hands a sink *encoded* outcomes (pickled bytes):
futures decode them at once, map runs leave the decoding to the consuming thread.
"""

from __future__ import annotations

import logging
import pickle

from . import _shm
from ._errors import TaskError

log = logging.getLogger("pardo.pool")


class WorkItem:
    """One call to run: ``fn(*args, **kwargs)`` under an optional deadline.

    Attributes:
        timeout_ns: the task's deadline, counted from its start in the worker (0 = none).
        payload: the pickled ``(args, kwargs)`` once dispatched, kept for a re-dispatch.
        fn_payload: the pickled ``fn`` when the producer already has it (map runs).
        claimed: the sink has agreed to run it (a future moved to "running").
        tries: how many workers died while it was in flight without it being the culprit.
    """

    __slots__ = (
        "fn",
        "args",
        "kwargs",
        "timeout_ns",
        "sink",
        "future",
        "index",
        "on_progress",
        "payload",
        "fn_payload",
        "claimed",
        "tries",
    )

    def __init__(self, fn, args, kwargs, timeout_ns, sink, future=None, index=0, on_progress=None):
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout_ns = timeout_ns
        self.sink = sink
        self.future = future
        self.index = index
        self.on_progress = on_progress
        self.payload = None
        self.fn_payload = None
        self.claimed = False
        self.tries = 0


def describe_call(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{name}()"


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` to an exception re-raised from a worker: its traceback
    there, tagged with the worker's pid and host."""

    def __init__(self, tb_text: str, where: str):
        super().__init__(tb_text, where)
        self.tb_text = tb_text
        self.where = where

    def __str__(self):
        return f'\n"""\nTraceback from {self.where}:\n{self.tb_text}"""'


def decode_error(payload, where: str) -> BaseException:
    """Rebuild the exception a worker sent (see ``pardo._worker._encode_error``)."""
    try:
        exc, tb_text, desc = _shm.loads(payload, unlink_after=True)
    except Exception as err:  # the error payload itself is broken: say so, keep going
        return TaskError(f"a task failed in {where} and its error could not be read: {err!r}")
    if exc is None:
        exc = TaskError(f"task raised {desc} (the exception could not be pickled)")
    exc.__cause__ = RemoteTraceback(tb_text, where)
    return exc


def decode_outcome(ok: bool, payload, where: str):
    """The value a worker sent, or raise the exception it sent."""
    if ok:
        try:
            return _shm.loads(payload, unlink_after=True)
        except Exception as err:
            raise pickle.UnpicklingError(
                f"the result sent by {where} cannot be unpickled here: {type(err).__name__}: {err}"
            ) from err
    raise decode_error(payload, where)


class FutureSink:
    """Settles ``item.future``. One instance serves every future of a pool."""

    batched = False  # every settle is visible at once; nothing to notify

    def claim(self, item) -> bool:
        return item.future.set_running_or_notify_cancel()

    def settle_encoded(self, item, ok, payload, where):
        try:
            value = decode_outcome(ok, payload, where)
        except BaseException as exc:
            self.fail(item, exc)
        else:
            self.settle(item, value)

    def settle(self, item, value):
        fut = item.future
        if not fut.done():
            fut.set_result(value)

    def fail(self, item, exc):
        fut = item.future
        if not fut.done():
            # A pending future (never claimed) must become running before it can fail.
            if not item.claimed and not fut.set_running_or_notify_cancel():
                return
            fut.set_exception(exc)

    def cancel(self, item):
        item.future.cancel()

    def notify(self):
        pass


FUTURE_SINK = FutureSink()


def report_callback_error(what, exc):
    log.error("pardo.Pool: %s raised", what, exc_info=exc)
