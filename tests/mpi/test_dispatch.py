"""The scheduler's side of the protocol over an in-memory transport: credit balancing,
kills of pending tasks, and ranks lost mid-run (re-queued where the job goes on)."""

from __future__ import annotations

import collections
import os
import threading
import time

import pytest

from pardo._mpi import _protocol as P
from pardo._mpi._dispatch import Dispatcher
from pardo._mpi._serve import serve


class Hub:
    """Mailboxes for peers 0..size-1; a peer marked dead neither sends nor receives."""

    def __init__(self, size):
        self.boxes = [collections.deque() for _ in range(size)]
        self.dead = set()
        self.size = size
        self.over = False  # the test is over: every rank, dead or not, gets SHUTDOWN


class MemTransport(P.Transport):
    def __init__(self, hub, rank):
        self.hub, self.rank, self.size, self.host = hub, rank, hub.size, f"h{rank}"

    def send(self, dest, msg):
        if self.rank not in self.hub.dead and dest not in self.hub.dead:
            self.hub.boxes[dest].append((self.rank, msg))

    def poll(self):
        if self.hub.over and self.rank:
            return (0, (P.SHUTDOWN,))
        if self.rank in self.hub.dead:
            return None
        try:
            return self.hub.boxes[self.rank].popleft()
        except IndexError:
            return None

    def flush(self, timeout):
        return True


class EchoRunner:
    """Finishes every task at once with (payload, worker rank)."""

    def __init__(self, rank, hold=False):
        self.rank = rank
        self.hold = hold  # keep tasks (never finish): a rank about to be lost
        self.ready = []
        self.r, self.w = os.pipe()

    def fileno(self):
        return self.r

    def start(self, tid, payload):
        self.ready.append((tid, (payload, self.rank)))
        return ()

    def kill(self, tid, hard):
        pass

    def done(self):
        if self.hold:
            return []
        out, self.ready = self.ready, []
        return out

    def close(self):
        os.close(self.r)
        os.close(self.w)
        return []


def _setup(nworkers, credit=2, lost_after=30.0, hold=()):
    hub = Hub(nworkers + 1)
    results = {}
    done = threading.Event()

    def on_result(tid, result, rank):
        results[tid] = (result, rank)
        done.set()

    disp = Dispatcher(MemTransport(hub, 0), on_result, lost_after=lost_after)
    threads = []
    for r in range(1, nworkers + 1):
        runner = EchoRunner(r, hold=r in hold)
        # heartbeats well inside lost_after: an idle healthy rank must never look lost
        th = threading.Thread(target=serve, args=(MemTransport(hub, r), runner),
                              kwargs={"credit": credit, "slots": 1,
                                      "heartbeat_every": min(P.HEARTBEAT_EVERY, lost_after / 6)},
                              daemon=True)
        th.start()
        threads.append(th)
    disp.start(timeout=10)
    return hub, disp, results, threads


def _teardown(hub, threads):
    """End every worker rank's loop, the lost ones too (their runners' pipes close)."""
    hub.over = True
    for th in threads:
        th.join(5)
        assert not th.is_alive()


def _wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_tasks_spread_over_the_ranks_by_credit():
    _hub, disp, results, threads = _setup(2)
    for i in range(1, 201):
        disp.submit(i, ("cmd", i))
    _wait(lambda: len(results) == 200)
    assert {tid: res[0][0] for tid, res in results.items()} == {i: ("cmd", i) for i in
                                                             range(1, 201)}
    per_rank = collections.Counter(rank for _, rank in results.values())
    assert set(per_rank) == {1, 2} and min(per_rank.values()) >= 50
    disp.close()
    for th in threads:
        th.join(5)
        assert not th.is_alive()  # SHUTDOWN reached every rank


def test_a_kill_of_a_pending_task_cancels_it_without_sending_it():
    hub, disp, results, threads = _setup(1, hold={1})  # the only rank never finishes
    for i in range(1, 6):
        disp.submit(i, ("cmd", i))
    _wait(lambda: disp.ranks[1].inflight == {1, 2})
    disp.kill(5)  # credit 2: tasks 3..5 are still pending on rank 0
    _wait(lambda: 5 in results)
    assert results[5] == (None, None)
    assert 5 not in disp._where and disp.ranks[1].inflight == {1, 2}
    hub.dead.add(1)  # let close() finish without waiting for the held tasks
    disp.lost_after = 0.0
    disp.close()
    _teardown(hub, threads)


def test_a_lost_rank_s_tasks_run_on_the_ranks_left():
    hub, disp, results, threads = _setup(2, lost_after=0.3, hold={2})
    for i in range(1, 41):
        disp.submit(i, ("cmd", i))
    _wait(lambda: disp.ranks.get(2) is not None and disp.ranks[2].inflight)
    on_2 = set(disp.ranks[2].inflight)
    hub.dead.add(2)  # silent from now on: no results, no heartbeats
    _wait(lambda: len(results) == 40)
    assert disp.lost == [2]
    assert all(results[t][1] == 1 for t in on_2)  # re-queued and run by rank 1
    assert {t: r[0][0] for t, r in results.items()} == {i: ("cmd", i) for i in range(1, 41)}
    disp.close()
    _teardown(hub, threads)


def test_with_every_rank_lost_tasks_fail_instead_of_waiting():
    hub, disp, results, threads = _setup(1, lost_after=0.3, hold={1})
    for i in range(1, 11):
        disp.submit(i, ("cmd", i))
    hub.dead.add(1)
    t0 = time.monotonic()
    _wait(lambda: len(results) == 10)
    assert time.monotonic() - t0 < 5
    assert set(results.values()) == {(None, -1)}
    disp.close()
    _teardown(hub, threads)


@pytest.mark.parametrize("size", [1, 2])
def test_start_waits_for_ranks_and_gives_up_in_bounded_time(size):
    hub = Hub(size + 1)
    disp = Dispatcher(MemTransport(hub, 0), lambda *a: None)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="worker ranks reported"):
        disp.start(timeout=0.2)
    assert time.monotonic() - t0 < 2
