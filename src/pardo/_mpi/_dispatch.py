"""Rank 0's side: hands tasks to worker ranks as they ask for them, and results back.

::

    caller's thread                     dispatcher thread (owns the transport)
    submit(payload) ──► _ops deque ─┐
    kill(id)        ──► _ops deque ─┼─ wake pipe ─► drain ops ─► pending deque
                                    │               poll() ─► READY / RESULTS / HEARTBEAT / BYE
                                    │               give each rank tasks up to its credit
    on_result(id, result) ◄─────────┴────────────── (called on this thread, keep it short)

- Balancing is by credit: a worker rank announces how many tasks it wants in flight (its
  slots plus a few, so the network round trip is hidden behind running tasks); every result
  gives one credit back, so a rank that finishes sooner gets more.
- A kill of a task still pending here completes it at once as cancelled with no pid (it never
  ran); one already sent becomes a KILL message to its rank.
- A rank silent for longer than ``lost_after`` seconds is lost: its in-flight tasks go back to
  the front of the pending queue for the other ranks (with MPICH's default device the job has
  ended before that could happen; other MPI libraries can keep going). With no rank left they
  fail with status "error".
- The caller's side never takes a lock that this thread holds while it waits, so ``kill`` is
  safe in a signal handler: it appends to a deque and writes a byte to a pipe.
"""

from __future__ import annotations

import collections
import os
import select
import threading
import time

from .._errors import DispatchError
from . import _protocol as P


class _Rank:
    __slots__ = ("credit", "done", "host", "inflight", "rank", "seen", "slots")

    def __init__(self, rank, host, slots, credit, now):
        self.rank = rank
        self.host = host
        self.slots = slots
        self.credit = credit
        self.inflight = set()
        self.seen = now
        self.done = 0  # results returned (the tests check that work was spread)


def _credit(r):
    return r.credit


class Dispatcher:
    """Rank 0's scheduler over a transport.

    Args:
        transport: a :class:`pardo._mpi._protocol.Transport` with ``rank == 0``.
        on_result: ``on_result(id, result, rank)``, called on the dispatcher thread. With
            ``result`` None, ``rank`` is None for a task cancelled before it left rank 0 and
            -1 for one that cannot run (every rank lost, or this thread failed).
        lost_after: seconds of silence after which a rank is lost.
        clock: monotonic clock (injectable in tests).
    """

    def __init__(self, transport, on_result, *, lost_after=None, clock=time.monotonic):
        self._t = transport
        self._on_result = on_result
        self._clock = clock
        self.lost_after = float(os.environ.get("PARDO_MPI_LOST_AFTER", P.LOST_AFTER)
                                if lost_after is None else lost_after)
        self.ranks: dict[int, _Rank] = {}
        self.lost: list[int] = []
        self._ops = collections.deque()
        self._pending = collections.deque()  # (id, payload); cancelled ones skipped
        self._payloads = {}  # id -> payload of every task not yet completed
        self._where = {}  # id -> rank it was sent to
        self._cancelled = set()  # ids killed while pending here
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closing = False
        self._error = None
        self._thread = None
        self._bye = set()

    # -- caller's side -------------------------------------------------------------------

    def start(self, timeout=60.0):
        """Wait for every worker rank's READY (up to ``timeout`` s), then run the thread."""
        end = self._clock() + timeout
        backoff = P.Backoff()
        want = self._t.size - 1
        try:
            while len(self.ranks) < want:
                got = self._t.poll()
                if got is None:
                    if self._clock() >= end:
                        raise DispatchError(f"only {len(self.ranks)} of {want} worker ranks "
                                            f"reported within {timeout:g} s")
                    time.sleep(backoff.next())
                    continue
                backoff.reset()
                self._handle(*got)
        except BaseException:
            self._close_wake()  # a dispatcher that never started keeps no pipe open
            raise
        self._thread = threading.Thread(target=self._run, name="pardo-mpi-dispatch",
                                        daemon=True)
        self._thread.start()

    @property
    def slots(self) -> int:
        return sum(r.slots for r in self.ranks.values())

    def submit(self, tid, payload):
        self._ops.append(("submit", tid, payload))
        self._wake()

    def kill(self, tid, hard=True):
        self._ops.append(("kill", tid, hard))
        self._wake()

    def close(self, timeout=10.0):
        """Tell every rank to stop once nothing is in flight and wait (bounded) for them."""
        self._ops.append(("close",))
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close_wake()
        if self._error is not None:
            raise DispatchError(f"the MPI dispatcher failed: {self._error!r}") from self._error

    @property
    def error(self):
        return self._error

    def _close_wake(self):
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # full: a wake-up is pending already; closed: the loop is over

    # -- dispatcher thread ---------------------------------------------------------------

    def _run(self):
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - reported to the caller by every task
            self._error = e
            for tid in list(self._payloads):
                self._complete(tid, None, -1)

    def _loop(self):
        t = self._t
        backoff = P.Backoff()
        while True:
            busy = self._drain_ops()
            while True:
                got = t.poll()
                if got is None:
                    break
                busy = True
                self._handle(*got)
            if self._pending:
                busy |= self._assign()
            self._check_lost()
            if self._closing and not self._payloads:
                self._shutdown()
                return
            if busy:
                backoff.reset()
                continue
            wait = backoff.next()
            if wait:
                select.select([self._wake_r], [], [], wait)

    def _drain_ops(self):
        ops = self._ops
        if not ops:
            return False
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        while ops:
            op = ops.popleft()
            kind = op[0]
            if kind == "submit":
                self._payloads[op[1]] = op[2]
                self._pending.append((op[1], op[2]))
            elif kind == "kill":
                tid = op[1]
                rank = self._where.get(tid)
                if rank is not None:
                    self._t.send(rank, (P.KILL, tid, op[2]))
                elif tid in self._payloads and tid not in self._cancelled:
                    self._cancelled.add(tid)
                    self._complete(tid, None, None)
            else:
                self._closing = True
        return True

    def _handle(self, src, msg):
        kind = msg[0]
        r = self.ranks.get(src)
        if r is not None:
            r.seen = self._clock()
        if kind == P.RESULTS:
            for tid, result in msg[1]:
                self._where.pop(tid, None)
                if r is not None:
                    r.inflight.discard(tid)
                    r.credit += 1
                    r.done += 1
                self._complete(tid, result, src)
        elif kind == P.READY:
            _, host, slots, credit = msg
            self.ranks[src] = _Rank(src, host, slots, credit, self._clock())
        elif kind == P.BYE:
            self._bye.add(src)
            if not self._closing and r is not None:
                self._drop(r)  # it left on its own (interrupted): the others take its work
        # HEARTBEAT: being seen is all it says

    def _complete(self, tid, result, rank):
        if self._payloads.pop(tid, None) is None:
            return
        self._cancelled.discard(tid)
        self._on_result(tid, result, rank)

    def _assign(self):
        """Give pending tasks to the ranks with the most credit left, one task at a time,
        so that a trickle of tasks spreads over idle ranks instead of filling the first."""
        open_ = [r for r in self.ranks.values() if r.credit > 0]
        if not open_:
            return False
        batches = {}
        pending = self._pending
        while pending and open_:
            tid, payload = pending.popleft()
            if tid not in self._payloads:
                continue  # cancelled while pending
            r = max(open_, key=_credit)
            batches.setdefault(r.rank, []).append((tid, payload))
            r.inflight.add(tid)
            self._where[tid] = r.rank
            r.credit -= 1
            if r.credit == 0:
                open_.remove(r)
        for rank, batch in batches.items():
            self._t.send(rank, (P.TASKS, batch))
        return bool(batches)

    def _check_lost(self):
        now = self._clock()
        for r in list(self.ranks.values()):
            if now - r.seen <= self.lost_after:
                continue
            self._drop(r)

    def _drop(self, r):
        """Rank ``r`` is gone: its tasks in flight go back for the ranks that are left."""
        del self.ranks[r.rank]
        self.lost.append(r.rank)
        # back to the front, in their original order
        for tid in sorted(r.inflight, reverse=True):
            self._where.pop(tid, None)
            if tid in self._payloads:
                self._pending.appendleft((tid, self._payloads[tid]))
        if not self.ranks:
            for tid in list(self._payloads):
                self._complete(tid, None, -1)

    def _shutdown(self):
        for rank in self.ranks:
            self._t.send(rank, (P.SHUTDOWN,))
        # bounded: a rank that is gone never says BYE
        end = self._clock() + 10.0
        backoff = P.Backoff()
        while self._bye < set(self.ranks) and self._clock() < end:
            got = self._t.poll()
            if got is None:
                time.sleep(backoff.next())
                continue
            backoff.reset()
            self._handle(*got)
        self._t.flush(5.0)
