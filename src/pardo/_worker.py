"""A pardo.Pool worker process: ``python -m pardo._worker TASK_FD RESULT_FD SLOT_FD SLOT PREFIX``.

Started by the engine (never forked from the parent), it reads batches of tasks from
TASK_FD, runs them one after the other, and writes results to RESULT_FD (protocol in
:mod:`pardo._pool_wire`). Around each task it writes into its slot of the shared mapping on
SLOT_FD: the seq of the task it is busy with, and, for a task with a deadline, the absolute
monotonic deadline the engine enforces by killing this process's whole tree.

Results are written back in groups, not one by one: a group is flushed when a batch ends,
when a task starts more than ``FLUSH_NS`` after the last flush, and before progress values.
So a slow task's result leaves as soon as the next task starts, while a stream of tiny tasks
costs one write per ~``FLUSH_NS`` of work. If this process dies, the parent re-runs the tasks
whose results had not reached it — at most the last ``FLUSH_NS`` worth of completed work.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import socket
import sys
import time
import traceback

# Flush completed results at least this often (ns) while a batch runs.
FLUSH_NS = 2_000_000


def _describe_call(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{name}()"


def _encode_error(exc, shm):
    """Payload for a failed task: the exception if it can travel, its traceback as text,
    and a one-line description for when the exception itself cannot travel."""
    tb_text = "".join(traceback.format_exception(exc))
    desc = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    try:
        return shm.dumps((exc, tb_text, desc))
    except Exception:
        return shm.dumps((None, tb_text, desc))


class _Worker:
    def __init__(self, task_fd, result_fd, slot_fd, slot, prefix):
        from . import _channel, _shm, _pool_wire as wire

        self.wire = wire
        self.shm = _shm
        self.result_fd = result_fd
        self.tasks = os.fdopen(task_fd, "rb", buffering=1 << 16)
        size = (slot + 1) * wire.SLOT_SIZE
        self.map = mmap.mmap(slot_fd, size)
        os.close(slot_fd)
        base = slot * wire.SLOT_SIZE
        self.slot = memoryview(self.map)[base : base + wire.SLOT_SIZE].cast("q")
        self.arena = _shm.BufferArena(f"{prefix}-w{os.getpid()}")
        self.fn_cache = {}
        self.out = []
        self.busy_ns = 0
        self.last_flush = time.monotonic_ns()
        self.current_seq = 0
        _channel.set_process_emitter(self._emit_progress)

    def send(self, message):
        self.wire.write_all(self.result_fd, self.wire.frame(message))

    def flush(self):
        if self.out:
            self.send((self.wire.RESULTS, self.out, self.busy_ns))
            self.out = []
            self.busy_ns = 0
        self.last_flush = time.monotonic_ns()

    def _emit_progress(self, value):
        seq = self.current_seq
        if not seq:
            return
        payload = self.shm.dumps(value, self.arena)
        # Results that are ready go first, so the parent sees them no later than this.
        self.flush()
        self.send((self.wire.PROGRESS, seq, payload))

    def initialize(self, sys_path, init_payload):
        sys.path[:] = sys_path
        if init_payload is None:
            return True
        try:
            initializer, initargs = self.shm.loads(init_payload)
            initializer(*initargs)
        except BaseException as exc:
            err = _encode_error(exc, self.shm)
            self.send((self.wire.INIT_FAILED, err, "".join(traceback.format_exception(exc))))
            return False
        return True

    def load_fn(self, data):
        fn = self.fn_cache.get(data)
        if fn is None:
            fn = self.shm.loads(data)
            if len(self.fn_cache) > 64:
                self.fn_cache.clear()
            self.fn_cache[data] = fn
        return fn

    def run_batch(self, fns, tasks):
        slot = self.slot
        shm = self.shm
        arena = self.arena
        out = self.out
        clock = time.monotonic_ns
        for seq, fi, payload, timeout_ns in tasks:
            start = clock()
            if out and start - self.last_flush >= FLUSH_NS:
                self.flush()
                out = self.out
            slot[2] = seq
            if timeout_ns:
                slot[1] = seq
                slot[0] = start + timeout_ns
            self.current_seq = seq
            fn = None
            try:
                fn = self.load_fn(fns[fi])
                try:
                    args, kwargs = shm.loads(payload)
                except Exception as exc:
                    raise _ArgumentsUnpickling(exc) from exc
                value = fn(*args, **kwargs) if kwargs else fn(*args)
                if timeout_ns:
                    slot[0] = 0
                try:
                    data = shm.dumps(value, arena)
                except Exception as exc:
                    err = pickle.PicklingError(
                        f"the result of {_describe_call(fn)} cannot be pickled: "
                        f"{_short_repr(value)} ({type(exc).__name__}: {exc})"
                    )
                    err.__cause__ = exc
                    out.append((seq, False, _encode_error(err, shm)))
                else:
                    out.append((seq, True, data))
            except BaseException as exc:
                if timeout_ns:
                    slot[0] = 0
                if isinstance(exc, _ArgumentsUnpickling):
                    cause = exc.__cause__
                    exc = pickle.UnpicklingError(
                        f"the arguments of {_describe_call(fn)} cannot be unpickled in the "
                        f"worker ({type(cause).__name__}: {cause})"
                    )
                    exc.__cause__ = cause
                out.append((seq, False, _encode_error(exc, shm)))
            self.current_seq = 0
            slot[2] = 0
            self.busy_ns += clock() - start
        self.flush()

    def serve(self):
        wire = self.wire
        first = wire.read_frame(self.tasks)
        if first is None:
            return 0
        _, sys_path, init_payload = first
        if not self.initialize(sys_path, init_payload):
            return 1
        self.send((wire.READY, os.getpid(), socket.gethostname()))
        while True:
            message = wire.read_frame(self.tasks)
            if message is None:
                self.flush()
                return 0
            _, fns, tasks = message
            self.run_batch(fns, tasks)


class _ArgumentsUnpickling(Exception):
    pass


def _short_repr(obj) -> str:
    import reprlib

    try:
        return reprlib.repr(obj)
    except Exception:
        return f"<{type(obj).__qualname__} object>"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task_fd, result_fd, slot_fd, slot = (int(a) for a in argv[:4])
    prefix = argv[4]
    # The parent handles Ctrl-C for the whole pool; a worker must not die of it mid-task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep the pipes out of programs a task execs (subprocess closes them anyway; os.system
    # and friends would not), so that the parent sees end-of-file when this process dies.
    for fd in (task_fd, result_fd):
        os.set_inheritable(fd, False)
    return _Worker(task_fd, result_fd, slot_fd, slot, prefix).serve()


if __name__ == "__main__":
    sys.exit(main())
