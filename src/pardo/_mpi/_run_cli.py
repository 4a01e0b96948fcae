"""``pardo run --mpi``: the batch runner on rank 0, its tasks on the other ranks.

Rank 0 runs the ordinary batch loop (:class:`pardo._batch.Batch`: inputs, templates,
retries, halt, ``-k``, output, joblog) with a :class:`RemoteEngine` in place of this
process's engine: where the loop would spawn a task into a ``ResultQueue``, the task goes to
the dispatcher, and its :class:`pardo.Result` comes back from the rank that ran it. Every
other rank runs :func:`pardo._mpi._serve.serve` with a command runner, so deadlines,
tree kills and output capture stay local to the rank that runs the task.
"""

from __future__ import annotations

import collections
import os
import select
import sys
import threading
import time

from .._errors import DispatchError
from ._dispatch import Dispatcher
from ._load import check_world, load_mpi, require_mpi4py, under_launcher
from ._protocol import ahead_per_rank


class RemoteTask:
    """What :class:`pardo._batch.Batch` holds for a task sent to another rank."""

    __slots__ = ("_engine", "id", "result", "tag")

    def __init__(self, tid, tag, engine):
        self.id = tid
        self.tag = tag
        self.result = None
        self._engine = engine

    def kill(self):
        self._engine.dispatcher.kill(self.id, True)

    def terminate(self):
        self._engine.dispatcher.kill(self.id, False)

    def wait(self, timeout=None):
        return self._engine.wait_for(self, timeout)


class RemoteQueue:
    """The finished remote tasks, with :class:`pardo.ResultQueue`'s ``get_many`` and
    ``fileno`` (a pipe that is readable while results wait)."""

    def __init__(self, engine):
        self._engine = engine
        self._ready = collections.deque()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.inflight = 0

    def fileno(self):
        return self._r

    def _put(self, task):
        self._ready.append(task)
        try:
            os.write(self._w, b"x")
        except BlockingIOError:
            pass

    def get_many(self, max_items=1024, timeout=None, min_items=1, max_delay=None):
        """Finished tasks (at most ``max_items``), waiting up to ``timeout`` for the first.

        ``min_items``/``max_delay`` are accepted for the batch loop and not needed: results
        arrive from other ranks in batches already.
        """
        if not self._ready and timeout != 0:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._ready:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                # bounded waits so that a failed dispatcher is noticed
                select.select([self._r], [], [], 1.0 if left is None else min(left, 1.0))
                self._engine.check()
        try:
            os.read(self._r, 1 << 16)
        except BlockingIOError:
            pass
        out = []
        ready = self._ready
        while ready and len(out) < max_items:
            out.append(ready.popleft())
        if ready:
            self._put_wake()
        self.inflight -= len(out)
        return out

    def _put_wake(self):
        try:
            os.write(self._w, b"x")
        except BlockingIOError:
            pass

    def close(self):
        os.close(self._r)
        os.close(self._w)


class RemoteSpawner:
    """The batch runner's spawner for tasks that run on other ranks."""

    def __init__(self, engine, kw):
        from .._run import DEVNULL, INHERIT, STDOUT

        specials = {id(DEVNULL): "DEVNULL", id(INHERIT): "INHERIT", id(STDOUT): "STDOUT"}
        # pardo's stream constants are identities, which pickling does not keep: they travel
        # by name and the worker rank looks them up in its own pardo
        self._kw = {k: (("pardo", specials[id(v)]) if id(v) in specials else v)
                    for k, v in kw.items()}
        self._engine = engine

    def __call__(self, argv, queue, tag=None, executable=None, cpus=None, out_fd=None,
                 err_fd=None, *, env_list=None, input=None):
        # Output files (spooling) are this machine's: a remote task's output comes back in
        # its result. A per-task environment (PARALLEL_SEQ...) or input (--pipe) travels
        # with the task.
        kw = self._kw
        if env_list is not None or input is not None:
            kw = dict(kw)
            if env_list is not None:
                kw["env"] = dict(e.split(b"=", 1) for e in env_list)
            if input is not None:
                kw["input"] = input
        return self._engine.submit(queue, tag, ("cmd", argv, executable, kw))


class RemoteEngine:
    """Stands in for this process's engine in :class:`pardo._batch.Batch` (its ``engine=``)."""

    def __init__(self, transport, dispatcher_kw=None):
        self.transport = transport
        self.dispatcher = Dispatcher(transport, self._on_result, **(dispatcher_kw or {}))
        self._tasks = {}  # id -> (RemoteTask, RemoteQueue)
        self._next_id = 0
        self._cond = threading.Condition()
        self.by_rank = collections.Counter()
        self._queues = []

    def start(self):
        self.dispatcher.start()
        return self

    @property
    def slots(self):
        """The slots of all worker ranks together (the batch's ``-j`` at most)."""
        return self.dispatcher.slots

    def queue(self, max_running=None):
        q = RemoteQueue(self)
        self._queues.append(q)
        return q

    def spawner(self, **kw):
        return RemoteSpawner(self, kw)

    def submit(self, q, tag, payload):
        self._next_id += 1
        tid = self._next_id
        task = RemoteTask(tid, tag, self)
        self._tasks[tid] = (task, q)
        q.inflight += 1
        self.dispatcher.submit(tid, payload)
        return task

    def _on_result(self, tid, result, rank):
        task, q = self._tasks.pop(tid)
        if result is None:
            from .._result import Result, Status

            err = self.dispatcher.error
            if rank is None:
                result = Result(args=[], status=Status.CANCELLED)  # never left rank 0
            else:
                why = (f"the MPI dispatcher failed: {err!r}" if err is not None
                       else "its MPI rank was lost and no rank was left to run it again")
                result = Result(args=[], status=Status.ERROR, error=why)
        else:
            r = self.dispatcher.ranks.get(rank)
            result.host = f"{rank}@{r.host if r is not None else '?'}"
            self.by_rank[rank] += 1
        task.result = result
        q._put(task)
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, task, timeout=None):
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while task.result is None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"remote task {task.id} still running after {timeout} s")
                self._cond.wait(1.0 if left is None else min(left, 1.0))
                self.check()
        return task.result

    def check(self):
        err = self.dispatcher.error
        if err is not None:
            raise DispatchError(f"the MPI dispatcher failed: {err!r}") from err

    def close(self):
        try:
            self.dispatcher.close()
        finally:
            for q in self._queues:
                q.close()


def enter(slots):
    """The CLI's ``--mpi`` hook, called before inputs are read; ``slots`` per worker rank.

    Returns:
        None to run locally (one process: said on stderr); a :class:`RemoteEngine` on rank 0;
        on a worker rank it serves tasks until rank 0 is done and returns an exit status (int).
    """
    require_mpi4py()
    if not under_launcher():
        print("pardo run: --mpi without mpiexec/srun: running locally on this machine",
              file=sys.stderr)
        return None
    MPI = load_mpi()
    check_world(MPI.COMM_WORLD.Get_size())
    if MPI.COMM_WORLD.Get_size() == 1:
        print("pardo run: --mpi in an MPI job of one process: running locally",
              file=sys.stderr)
        return None
    from ._transport_mpi import MPITransport

    t = MPITransport()
    if t.rank == 0:
        return RemoteEngine(t).start()
    from ._serve import CommandRunner, serve

    serve(t, CommandRunner(slots), credit=slots + ahead_per_rank(slots), slots=slots)
    return 0
