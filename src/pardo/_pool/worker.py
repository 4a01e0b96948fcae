"""A pardo.Pool worker process:
``python -m pardo._pool.worker TASK_FD RESULT_FD WATCH_FD INDEX PREFIX``.

Started by the engine (never forked from the parent), it reads batches of chunks of calls
from TASK_FD, runs the calls one after the other, and writes results to RESULT_FD (protocol
in ``wire.py``). Around each call it writes into its watch record, number INDEX of the
pool's shared mapping on WATCH_FD: the seq of the call it is busy with, and, for a call
with a deadline, the absolute monotonic deadline the engine enforces by killing this
process's whole tree.

Results are written back in groups, not one by one: a group is flushed when a batch ends,
when a call starts more than ``FLUSH_NS`` after the last flush, and before progress values.
So a slow call's result leaves as soon as the next call starts, while a stream of tiny calls
costs one write per ~``FLUSH_NS`` of work. If this process dies, the parent re-runs the calls
whose results had not reached it — at most the last ``FLUSH_NS`` worth of completed work.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback

from . import channel, shm, wire
from .failures import describe_call, encode_error, short_repr
from .items import ELEMENT_BITS, WHOLE_CHUNK
from .wire import WATCH_DEADLINE, WATCH_RUNNING, WATCH_SEQ

# Flush completed results at least this often (ns) while a batch runs.
FLUSH_NS = 2_000_000


class Worker:
    """The worker's state: its pipes, its watch record, results not yet sent.

    Args:
        clock_ns: the monotonic clock of deadlines and flush timing, in ns. Deadlines must
            be CLOCK_MONOTONIC, which the engine compares them with; tests pass a fake to
            check flush timing.
    """

    def __init__(self, task_fd, result_fd, watch_fd, index, prefix, clock_ns=time.monotonic_ns):
        self.result_fd = result_fd
        self.tasks = os.fdopen(task_fd, "rb", buffering=1 << 16)
        size = (index + 1) * wire.WATCH_RECORD_SIZE
        self.map = mmap.mmap(watch_fd, size)
        os.close(watch_fd)
        base = index * wire.WATCH_RECORD_SIZE
        self.watch = memoryview(self.map)[base: base + wire.WATCH_RECORD_SIZE].cast("q")
        self.arena = shm.BufferArena(f"{prefix}-w{os.getpid()}")
        self.clock_ns = clock_ns
        self.fn_cache = {}
        self.out = []
        self.busy_ns = 0
        self.last_flush = clock_ns()
        self.current_seq = 0
        self.send_lock = threading.Lock()
        channel.set_process_emitter(self._emit_progress)

    def send(self, message):
        data = wire.frame(message)
        # A task may call pardo.progress() from a thread of its own: frames must not mix.
        with self.send_lock:
            wire.write_all(self.result_fd, data)

    def flush(self):
        if self.out:
            calls = sum(entry[2] for entry in self.out)
            self.send((wire.RESULTS, self.out, self.busy_ns, calls))
            self.out = []
            self.busy_ns = 0
        self.last_flush = self.clock_ns()

    def _emit_progress(self, value):
        seq = self.current_seq
        if not seq:
            return
        payload = shm.dumps(value, self.arena)
        # Results that are ready go first, so the parent sees them no later than this.
        self.flush()
        self.send((wire.PROGRESS, seq, payload))

    def initialize(self, sys_path, init_payload):
        sys.path[:] = sys_path
        if init_payload is None:
            return True
        try:
            initializer, initargs = shm.loads(init_payload)
            initializer(*initargs)
        except BaseException as exc:
            err = encode_error(exc)
            self.send((wire.INIT_FAILED, err, "".join(traceback.format_exception(exc))))
            return False
        return True

    def load_fn(self, data):
        fn = self.fn_cache.get(data)
        if fn is None:
            fn = shm.loads(data)
            if len(self.fn_cache) > 64:
                self.fn_cache.clear()
            self.fn_cache[data] = fn
        return fn

    def run_batch(self, fns, chunks):
        watch = self.watch
        for seq, fi, payload, timeout_ns, count in chunks:
            whole = (seq << ELEMENT_BITS) | WHOLE_CHUNK
            watch[WATCH_RUNNING] = whole  # a crash from here to the first call: the chunk
            self.current_seq = whole
            fn = None
            try:
                fn = self.load_fn(fns[fi])
                args, kwargs = shm.loads(payload)
            except BaseException as exc:  # SystemExit from a __reduce__ is this call's error
                what = "the callable" if fn is None else f"the arguments of {describe_call(fn)}"
                err = pickle.UnpicklingError(
                    f"{what} cannot be unpickled in the worker ({type(exc).__name__}: {exc})"
                )
                err.__cause__ = exc
                self.out.append((seq, 0, count, wire.SPLIT, encode_error(err)))
            else:
                self.run_chunk(seq, fn, args, kwargs, timeout_ns)
            self.current_seq = 0
            watch[WATCH_RUNNING] = 0
        self.flush()

    def run_chunk(self, seq, fn, args, kwargs, timeout_ns):
        """Run the calls of one chunk; their results go to ``self.out`` in parts."""
        watch = self.watch
        clock = self.clock_ns
        base = seq << ELEMENT_BITS
        values = []
        errors = None  # {index in values: exception}
        first = 0  # offset of values[0] in the chunk
        started = clock()
        for i, a in enumerate(args):
            now = clock()
            if now - self.last_flush >= FLUSH_NS and (values or self.out):
                self.emit(seq, first, fn, values, errors)
                self.busy_ns += now - started
                started = now
                self.flush()
                values = []
                errors = None
                first = i
            eseq = base | i
            watch[WATCH_RUNNING] = eseq
            self.current_seq = eseq
            if timeout_ns:
                watch[WATCH_SEQ] = eseq
                watch[WATCH_DEADLINE] = now + timeout_ns
            try:
                value = fn(*a) if kwargs is None else fn(*a, **kwargs[i])
            except BaseException as exc:
                value = None
                if errors is None:
                    errors = {}
                errors[len(values)] = exc
            if timeout_ns:
                watch[WATCH_DEADLINE] = 0
            values.append(value)
        self.emit(seq, first, fn, values, errors)
        self.busy_ns += clock() - started

    def emit(self, seq, first, fn, values, errors):
        """Queue the results of calls ``first:first+len(values)`` of chunk ``seq``."""
        if not values:
            return
        arena = self.arena
        base = seq << ELEMENT_BITS
        self.watch[WATCH_RUNNING] = base | WHOLE_CHUNK
        if errors is None:
            try:
                data = shm.dumps(values, arena)
            except BaseException:
                pass  # some value cannot be pickled: find it, one by one
            else:
                self.out.append((seq, first, len(values), wire.OK_LIST, data))
                return
        entries = []
        for j, value in enumerate(values):
            self.watch[WATCH_RUNNING] = base | (first + j)  # a crash pickling it: blame it
            exc = errors.get(j) if errors else None
            if exc is None:
                try:
                    entries.append((True, shm.dumps(value, arena)))
                    continue
                except BaseException as err:  # SystemExit too: this call's error
                    exc = pickle.PicklingError(
                        f"the result of {describe_call(fn)} cannot be pickled: "
                        f"{short_repr(value)} ({type(err).__name__}: {err})"
                    )
                    exc.__cause__ = err
            entries.append((False, encode_error(exc)))
        self.out.append((seq, first, len(values), wire.EACH, entries))

    def serve(self):
        first = wire.read_frame(self.tasks)
        if first is None:
            return 0
        _, sys_path, init_payload, authkey = first
        import multiprocessing

        multiprocessing.current_process().authkey = authkey
        if not self.initialize(sys_path, init_payload):
            return 1
        self.send((wire.READY, os.getpid(), socket.gethostname()))
        while True:
            message = wire.read_frame(self.tasks)
            if message is None:
                self.flush()
                return 0
            _, fns, chunks = message
            self.run_batch(fns, chunks)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task_fd, result_fd, watch_fd, index = (int(a) for a in argv[:4])
    prefix = argv[4]
    # The parent handles Ctrl-C for the whole pool; a worker must not die of it mid-task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep the pipes out of programs a task execs (subprocess closes them anyway; os.system
    # and friends would not), so that the parent sees end-of-file when this process dies.
    for fd in (task_fd, result_fd):
        os.set_inheritable(fd, False)
    return Worker(task_fd, result_fd, watch_fd, index, prefix).serve()


if __name__ == "__main__":
    sys.exit(main())
