"""The messages between the scheduler (rank 0) and a worker, apart from how they travel.

::

    worker                                   scheduler
      │ ── READY(host, slots, credit) ──────────► │  credit: tasks it wants in flight
      │ ◄──────────────── TASKS([(id, payload)]) ─ │  never more than the credit left
      │ ── RESULTS([(id, result)]) ─────────────► │  each result gives one credit back
      │ ◄─────────────────────── KILL(id, hard) ─ │  stop() / halt / N% deadline
      │ ── HEARTBEAT ───────────────────────────► │  when it has sent nothing for a while
      │ ◄────────────────────────────── SHUTDOWN ─ │  no more work
      │ ── BYE ─────────────────────────────────► │  its tasks are gone; it may exit

A message is a tuple ``(kind, *fields)`` of plain Python values (pickled by the transport).
A payload is ``("cmd", argv, executable, spawn_kw)`` for a command of ``pardo run`` or
``("call", blob)`` for a :class:`pardo.Pool` call (``blob`` is cloudpickled ``(fn, args,
kwargs, timeout)``). A result is the task's :class:`pardo.Result` for a command, or
``(ok, value_or_exception)`` for a call.

A transport moves messages between numbered peers (the scheduler is peer 0). It offers no
file descriptor to wait on (MPI has none), so the loops that use it poll it with a short
backoff between :meth:`Transport.poll` calls, as ``mpi4py.futures`` does.
"""

from __future__ import annotations

import os

READY = "ready"
TASKS = "tasks"
RESULTS = "results"
KILL = "kill"
HEARTBEAT = "heartbeat"
SHUTDOWN = "shutdown"
BYE = "bye"

SCHEDULER = 0
# A worker that has sent nothing for this long says it is alive; the scheduler declares a
# worker lost after LOST_AFTER seconds of silence (pardo.configure-free: env override).
HEARTBEAT_EVERY = 1.0
LOST_AFTER = 30.0
# Idle loops poll the transport at most this far apart: mpi4py.futures' default backoff
# (MPI4PY_FUTURES_BACKOFF), so a task waits no longer for its dispatch than it would there.
POLL_MAX = 0.001
POLL_MIN = 0.00002


def ahead_per_rank(slots: int) -> int:
    """Tasks a worker rank keeps beyond its slots: a freed slot starts the next task at once
    instead of after a round trip to rank 0, and results travel back in batches. Eight per
    slot took per-call time with 3 ranks from 426 to 154 us (bench/mpi.py); more helps
    short tasks a little and costs balance at the end of a run of long ones."""
    return max(2, int(os.environ.get("PARDO_MPI_AHEAD", "8")) * slots)


class Transport:
    """How messages travel; one object per process, used from one thread only.

    Attributes:
        rank: this peer's number (0 = the scheduler).
        size: number of peers.
        host: this peer's host name.
    """

    rank: int
    size: int
    host: str

    def send(self, dest: int, msg: tuple) -> None:
        """Queue ``msg`` for ``dest``; never blocks on the receiver."""
        raise NotImplementedError

    def poll(self):
        """One received ``(source, msg)``, or None when nothing is waiting."""
        raise NotImplementedError

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for queued sends to leave; True when they did."""
        raise NotImplementedError

    def abort(self, code: int) -> None:
        """End every peer (the whole job): the last resort when this peer cannot go on."""
        raise NotImplementedError


class Backoff:
    """Idle-wait lengths for a polling loop: short right after activity, then doubling up
    to :data:`POLL_MAX`, so a busy loop reacts within microseconds and an idle one costs
    about a thousand wake-ups a second."""

    __slots__ = ("_next",)

    def __init__(self):
        self._next = 0.0

    def reset(self):
        self._next = 0.0

    def next(self) -> float:
        n = self._next
        self._next = min(POLL_MAX, max(POLL_MIN, n * 2))
        return n
