"""The pool's wire protocol between the parent and a worker process.

Two pipes per worker, one each way. Every message is a frame: an 8-byte little-endian
length, then a pickle (protocol 5) of a tuple of built-in values whose first item is the
message kind. Task arguments, functions and results inside a message are themselves pickled
separately (see ``shm.py``), so that a worker can tell *which* task's data failed to
unpickle and the parent can fail exactly that task.

parent -> worker (task pipe):
    (INIT, sys_path, initializer_payload_or_None, authkey)   first message, once;
                             authkey: the parent's multiprocessing authentication key
    (BATCH, fns, chunks)     fns: list of pickled callables; chunks: list of
                             (seq, fn_index, args_payload, timeout_ns, count) where the
                             payload unpickles to (args list, kwargs list or None) of
                             ``count`` calls, each with its own deadline (0 = none)
    end of file              finish what was sent, flush, exit 0

worker -> parent (result pipe):
    (READY, pid, host)                   initializer done; tasks will run
    (INIT_FAILED, exc_payload, tb_text)  initializer raised; the worker exits 1
    (RESULTS, entries, busy_ns, calls)   entries: (seq, offset, n, mode, data) for calls
                             offset..offset+n-1 of chunk seq (a long chunk is reported in
                             several parts, in order). mode OK_LIST: data is the pickled list
                             of the n return values. mode EACH: data is a list of n
                             (ok, payload) — a pickled value, or a pickled
                             (exception or None, traceback text, description). mode SPLIT:
                             the chunk's arguments could not be unpickled as a whole (data is
                             the error payload); the parent re-sends each call on its own.
    (PROGRESS, seq, payload) a value sent by pardo.progress() from call ``seq``

The worker also writes its watch record in the pool's shared memory (see
:data:`WATCH_RECORD_SIZE`).
"""

from __future__ import annotations

import os
import pickle
import struct

INIT, BATCH, READY, INIT_FAILED, RESULTS, PROGRESS = range(6)
OK_LIST, EACH, SPLIT = range(3)

_HEADER = struct.Struct("<Q")
HEADER_SIZE = _HEADER.size

# Each worker owns a watch record of WATCH_RECORD_SIZE bytes in one shared mapping, read as
# int64 words (indexes below):
#   WATCH_DEADLINE  absolute CLOCK_MONOTONIC deadline (ns) of the running call, 0 = none } what the
#   WATCH_SEQ       seq of the call that deadline belongs to                             } engine
#                   (the first pardo._run.WATCH_BYTES of the record)                     } reads
#   WATCH_RUNNING   seq of the call the worker is busy with, (chunk seq << ELEMENT_BITS) |
#                   WHOLE_CHUNK while it (un)pickles a chunk as a whole, 0 = none
# WATCH_RUNNING is the pool's own: after a crash it names the call to blame. A whole cache
# line per worker keeps the workers from sharing one.
WATCH_RECORD_SIZE = 64
WATCH_DEADLINE, WATCH_SEQ, WATCH_RUNNING = 0, 1, 2


def frame(message) -> bytes:
    body = pickle.dumps(message, 5)
    return _HEADER.pack(len(body)) + body


def write_all(fd: int, data) -> None:
    """Write all of ``data`` to a blocking fd."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FrameReader:
    """Reassembles frames from the chunks a non-blocking read returns."""

    __slots__ = ("_buf",)

    def __init__(self):
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list:
        """Add ``chunk``; return the messages it completed, in order."""
        buf = self._buf
        buf += chunk
        out = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            (n,) = _HEADER.unpack_from(buf, pos)
            if end - pos - HEADER_SIZE < n:
                break
            start = pos + HEADER_SIZE
            out.append(pickle.loads(memoryview(buf)[start : start + n]))
            pos = start + n
        if pos:
            del buf[:pos]
        return out


def read_frame(stream):
    """Read one message from a blocking binary stream; None at end of file."""
    head = stream.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE:
        return None
    (n,) = _HEADER.unpack(head)
    body = stream.read(n)
    if len(body) < n:
        return None
    return pickle.loads(body)
