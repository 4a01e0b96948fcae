"""One pool worker process as the parent sees it: started by the engine with its two pipes
and its watch record, fed frames through a non-blocking pipe, read back frame by frame.

Only the pool's manager thread touches a :class:`WorkerProcess` (see ``process.py``).
"""

from __future__ import annotations

import fcntl
import os
import selectors
import sys

from .._run import INHERIT, WATCH_BYTES, spawn
from . import wire

# Pipes of 1 MiB each way: a batch of arguments or results goes in one write.
PIPE_SIZE = 1 << 20
# The worker's fds, fixed: its task pipe, result pipe and the pool's watch mapping.
_TASK_FD, _RESULT_FD, _WATCH_FD = 3, 4, 5
# Selector events of a worker's pipes (the manager's other two are its own).
READ, WRITE = 1, 2


def worker_env():
    """The environment of worker processes: ours, with a PYTHONPATH that finds this very
    pardo, even when the caller found it through a sys.path entry of its own rather than
    an installed package."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=here + (os.pathsep + path if path else ""))


class WorkerProcess:
    """A worker process, its pipes and its record in the pool's watch mapping.

    Attributes:
        index: its place in the pool (and in the watch mapping).
        task: the engine's :class:`pardo.Task` for the process.
        inflight: chunk seq -> WorkItem sent to it and not yet settled, in dispatch order.
        load: calls in flight, not yet settled.
        assigned: calls ever sent to it (``max_tasks_per_child``).
        ready: it reported READY (its initializer ran).
        pid, where: its pid, and "worker pid N on HOST" for messages.
        watched: the engine is reading its watch record (a call with a deadline is queued).
        retiring: no more work for it: its input closes once what is buffered is written.
        dead: its death has been handled.
    """

    __slots__ = ("index", "task", "wfd", "rfd", "reader", "outbuf", "inflight", "assigned",
                 "ready", "pid", "where", "watched", "retiring", "wfd_closed", "watch_view",
                 "dead", "load", "_sel")

    def __init__(self, index, sel):
        self.index = index
        self._sel = sel
        self.task = None
        self.wfd = self.rfd = -1
        self.reader = wire.FrameReader()
        self.outbuf = bytearray()
        self.inflight = {}
        self.load = 0
        self.assigned = 0
        self.ready = False
        self.pid = None
        self.where = "a pool worker"
        self.watched = False
        self.retiring = False
        self.wfd_closed = False
        self.watch_view = None
        self.dead = False

    def start(self, watch_map, watch_fd, queue, token, env, *, kill_grace, memory_limit, nice):
        """Start the process (its death goes to ``queue``); register its result pipe."""
        base = self.index * wire.WATCH_RECORD_SIZE
        watch_map[base: base + wire.WATCH_RECORD_SIZE] = bytes(wire.WATCH_RECORD_SIZE)
        # The engine reads the first WATCH_BYTES of the record; the rest is the pool's.
        self.watch_view = memoryview(watch_map)[base: base + WATCH_BYTES]
        task_r, task_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        for fd in (task_w, res_r):
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # above /proc/sys/fs/pipe-max-size: the default size still works
            os.set_blocking(fd, False)
        argv = [sys.executable, "-m", "pardo._pool.worker", str(_TASK_FD), str(_RESULT_FD),
                str(_WATCH_FD), str(self.index), token]
        try:
            self.task = spawn(
                argv,
                queue=queue,
                pass_fds={_TASK_FD: task_r, _RESULT_FD: res_w, _WATCH_FD: watch_fd},
                stdout=INHERIT,
                stderr=INHERIT,
                kill_grace=kill_grace,
                env=env,
                memory_limit=memory_limit,
                nice=nice,
                tag=("pardo.Pool worker", self.index),
            )
        except BaseException:  # nothing of this worker may outlive the failed start
            os.close(task_w)
            os.close(res_r)
            self.watch_view.release()
            raise
        finally:
            os.close(task_r)
            os.close(res_w)
        self.wfd, self.rfd = task_w, res_r
        self._sel.register(self.rfd, selectors.EVENT_READ, (READ, self))

    def send(self, message):
        """Queue a frame for the worker and write what the pipe takes now."""
        self.outbuf += wire.frame(message)
        self.flush()

    def flush(self):
        """Write buffered frames without blocking; watch for writability while some wait."""
        if self.wfd_closed or self.dead:
            return
        if self.outbuf:
            try:
                n = os.write(self.wfd, self.outbuf)
                del self.outbuf[:n]
            except BlockingIOError:
                pass
            except BrokenPipeError:
                self.outbuf.clear()  # the worker is dead; its death is on its way
        registered = self._sel.get_map().get(self.wfd) is not None
        if self.outbuf and not registered:
            self._sel.register(self.wfd, selectors.EVENT_WRITE, (WRITE, self))
        elif not self.outbuf and registered:
            self._sel.unregister(self.wfd)
        if not self.outbuf and self.retiring:
            self.close_input()

    def close_input(self):
        """End of file for the worker (it finishes what it has, then exits); deferred
        until what is buffered has been written."""
        if self.wfd_closed:
            return
        if self.outbuf:
            self.retiring = True  # closed by flush() once the buffer is written
            return
        self.wfd_closed = True
        try:
            self._sel.unregister(self.wfd)
        except KeyError:
            pass
        os.close(self.wfd)

    def read(self):
        """The messages its result pipe has now ([] at end of file: the death follows)."""
        try:
            chunk = os.read(self.rfd, PIPE_SIZE)
        except BlockingIOError:
            return []
        if not chunk:
            self._sel.unregister(self.rfd)
            return []
        return self.reader.feed(chunk)

    def read_to_end(self):
        """Whatever a dead worker left in its result pipe, then close the pipe."""
        messages = []
        while True:
            try:
                chunk = os.read(self.rfd, PIPE_SIZE)
            except OSError:  # BlockingIOError too: nothing more will come
                break
            if not chunk:
                break
            messages += self.reader.feed(chunk)
        try:
            self._sel.unregister(self.rfd)
        except KeyError:
            pass
        os.close(self.rfd)
        self.rfd = -1
        return messages

    def watch(self, idle_recheck):
        """Let the engine enforce the deadlines the worker writes into its watch record."""
        if not self.watched:
            self.task.watch(self.watch_view, idle_recheck)
            self.watched = True

    def unwatch(self):
        if self.watched:
            self.task.unwatch()
            self.watched = False

    def release(self):
        """Close what is left of its pipes and drop its view of the watch mapping."""
        for fd in (self.rfd, -1 if self.wfd_closed else self.wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.rfd = -1
        self.wfd_closed = True
        if self.watch_view is not None:
            self.watch_view.release()
