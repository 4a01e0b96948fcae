"""A worker rank's loop: runs what the scheduler sends under this rank's own engine.

::

    transport.poll() ── TASKS ──► runner.start(id, payload) ──► local engine / local Pool
                     ── KILL ───► runner.kill(id)                       │
                     ── SHUTDOWN ─► runner.close(), BYE, return         │
    select([runner.fileno()], backoff) ◄── readable when results wait ──┘
    runner.done() ──► RESULTS([(id, result)]) ──► transport (each gives a credit back)

Deadlines, whole-tree kills, isolation and output capture all happen here, in this rank's
engine, so a slow network never delays a kill. Nothing a task does runs in this process:
commands are spawned, calls go to worker processes of a local :class:`pardo.Pool`, so a
segfault or a deadline fails one task and never the rank.
"""

from __future__ import annotations

import collections
import os
import select
import time

from . import _protocol as P


class CommandRunner:
    """Runs ``("cmd", argv, executable, spawn_kw)`` payloads with :func:`pardo.spawn`."""

    def __init__(self, slots):
        from .._result import Result, Status
        from .._run import DEVNULL, INHERIT, STDOUT, ResultQueue, spawn

        self._spawn, self._result, self._error = spawn, Result, Status.ERROR
        # pardo's stream constants travel by name (pickling does not keep identities)
        self._streams = {"DEVNULL": DEVNULL, "INHERIT": INHERIT, "STDOUT": STDOUT}
        self._q = ResultQueue(max_running=slots)
        self._tasks = {}

    def fileno(self):
        return self._q.fileno()

    def start(self, tid, payload):
        _, argv, exe, kw = payload
        kw = {k: (self._streams[v[1]] if isinstance(v, tuple) and v[:1] == ("pardo",)
                  else v) for k, v in kw.items()}
        try:
            self._tasks[tid] = self._spawn(argv, queue=self._q, tag=tid, executable=exe, **kw)
        except (OSError, ValueError, TypeError) as e:
            # what spawn refuses is this task's error, as it would be in a local run
            r = self._result(args=list(argv), status=self._error, error=str(e))
            return [(tid, r)]
        return ()

    def kill(self, tid, hard):
        task = self._tasks.get(tid)
        if task is not None:
            task.kill() if hard else task.terminate()

    def done(self):
        if not self._tasks:
            return []
        out = []
        for task in self._q.get_many(timeout=0):
            del self._tasks[task.tag]
            out.append((task.tag, task.result))
        return out

    def close(self):
        """Kill what is left; return its results (cancelled) for the scheduler."""
        for task in list(self._tasks.values()):
            task.kill()
        left = [(tid, task.wait()) for tid, task in self._tasks.items()]
        self._tasks.clear()
        return left


def _invoke(blob):
    """Run one cloudpickled call in a worker process of the rank's local Pool."""
    import cloudpickle

    fn, args, kwargs = cloudpickle.loads(blob)
    return fn(*args, **kwargs)


class CallRunner:
    """Runs ``("call", blob, timeout)`` payloads in a local :class:`pardo.Pool`."""

    def __init__(self, slots, pool_kw):
        from .._pool import Pool

        self._pool = Pool(slots, **pool_kw)
        self._futures = {}
        self._ready = collections.deque()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self):
        return self._r

    def start(self, tid, payload):
        _, blob, timeout = payload
        kw = {} if timeout is None else {"timeout": timeout}
        fut = self._pool.schedule(_invoke, (blob,), **kw)
        self._futures[tid] = fut
        fut.add_done_callback(lambda f, tid=tid: self._settled(tid, f))
        return ()

    def _settled(self, tid, fut):
        self._ready.append((tid, fut))
        try:
            os.write(self._w, b"x")
        except (BlockingIOError, OSError):
            pass

    def kill(self, tid, hard):
        fut = self._futures.get(tid)
        if fut is not None:
            fut.cancel()  # a call already running finishes; the pool has no per-call kill

    def done(self):
        import cloudpickle

        if not self._ready:
            return []
        try:
            os.read(self._r, 4096)
        except BlockingIOError:
            pass
        out = []
        while self._ready:
            tid, fut = self._ready.popleft()
            self._futures.pop(tid, None)
            if fut.cancelled():
                res = (False, None)
            else:
                exc = fut.exception()
                res = (True, fut.result()) if exc is None else (False, exc)
            try:
                blob = cloudpickle.dumps(res)
            except Exception as e:  # noqa: BLE001 - the caller gets why
                blob = cloudpickle.dumps((False, RuntimeError(
                    f"the result of the call could not be pickled: {e!r}")))
            out.append((tid, blob))
        return out

    def close(self):
        """Cancel what has not started, wait for the rest; return their results."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        left = self.done()
        os.close(self._r)
        os.close(self._w)
        return left


def serve(transport, runner, *, credit, slots, heartbeat_every=P.HEARTBEAT_EVERY):
    """Run tasks from the scheduler until it says SHUTDOWN; return normally then.

    ``heartbeat_every``: seconds of silence after which this rank says it is alive; must be
    well under the scheduler's ``lost_after``.
    """
    t = transport
    t.send(P.SCHEDULER, (P.READY, t.host, slots, credit))
    last_sent = time.monotonic()
    backoff = P.Backoff()
    fd = runner.fileno()
    try:
        while True:
            busy = False
            results = []
            while True:
                got = t.poll()
                if got is None:
                    break
                busy = True
                msg = got[1]
                kind = msg[0]
                if kind == P.TASKS:
                    for tid, payload in msg[1]:
                        results.extend(runner.start(tid, payload))
                elif kind == P.KILL:
                    runner.kill(msg[1], msg[2])
                elif kind == P.SHUTDOWN:
                    return
            results.extend(runner.done())
            now = time.monotonic()
            if results:
                t.send(P.SCHEDULER, (P.RESULTS, results))
                last_sent = now
                busy = True
            elif now - last_sent >= heartbeat_every:
                t.send(P.SCHEDULER, (P.HEARTBEAT,))
                last_sent = now
            if busy:
                backoff.reset()
                continue
            wait = backoff.next()
            if wait:
                select.select([fd], [], [], wait)
    finally:
        # Also on an exception (SIGINT forwarded by mpiexec): what ran here is reported, so
        # the scheduler never waits for a task this rank no longer has.
        left = runner.close()
        if left:
            t.send(P.SCHEDULER, (P.RESULTS, left))
        t.send(P.SCHEDULER, (P.BYE,))
        t.flush(5.0)
