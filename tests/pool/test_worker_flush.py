"""The worker program's flush timing, by its injected clock: results of a run of calls
leave in parts, one part per FLUSH_NS of (fake) time, and the watch record names each call
while it runs."""

import os

from pardo._pool import channel, shm, wire
from pardo._pool.items import ELEMENT_BITS
from pardo._pool.worker import FLUSH_NS, Worker


class FakeClockNs:
    def __init__(self):
        self.t = 10**12

    def __call__(self):
        return self.t


CLOCK = FakeClockNs()
SEEN = []  # (arg, the watch record's WATCH_RUNNING word while the call ran)
WORKER = []


def one_ms_call(x):
    """A call that takes 1 ms by the worker's clock."""
    SEEN.append((x, WORKER[0].watch[wire.WATCH_RUNNING]))
    CLOCK.t += FLUSH_NS // 2
    return x * 10


def test_results_leave_once_per_flush_interval_of_the_worker_clock():
    task_r, task_w = os.pipe()
    res_r, res_w = os.pipe()
    watch_fd = os.memfd_create("pardo-test-watch", os.MFD_CLOEXEC)
    os.ftruncate(watch_fd, wire.WATCH_RECORD_SIZE)
    w = Worker(task_r, res_w, watch_fd, 0, f"pardo-test-{os.getpid()}", clock_ns=CLOCK)
    WORKER[:] = [w]
    SEEN.clear()
    try:
        args = shm.dumps(([(i,) for i in range(10)], None))
        w.run_batch([shm.dumps(one_ms_call)], [(7, 0, args, 0, 10)])
        messages = wire.FrameReader().feed(os.read(res_r, 1 << 20))
    finally:
        channel.set_process_emitter(None)
        w.watch.release()
        w.map.close()
        w.tasks.close()
        for fd in (task_w, res_r, res_w):
            os.close(fd)
    # A call starts a flush once FLUSH_NS have passed since the last: every second call.
    parts = [entry for kind, entries, _, _ in messages if kind == wire.RESULTS
             for entry in entries]
    assert [(seq, offset, n, mode) for seq, offset, n, mode, _ in parts] == [
        (7, first, 2, wire.OK_LIST) for first in range(0, 10, 2)]
    values = [v for *_, data in parts for v in shm.loads(data)]
    assert values == [i * 10 for i in range(10)]
    assert SEEN == [(i, (7 << ELEMENT_BITS) | i) for i in range(10)]
    busy = sum(busy_ns for kind, _, busy_ns, _ in messages if kind == wire.RESULTS)
    assert busy == 10 * FLUSH_NS // 2  # each part's busy time, by the same clock
