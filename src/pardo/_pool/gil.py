"""Does a callable release the GIL? :func:`pardo.releases_gil` measures it, so that
``backend="thread"`` is chosen on evidence."""

from __future__ import annotations

import threading
import time

from .._errors import UsageError
from .executor import default_jobs


class GilVerdict:
    """What :func:`releases_gil` measured. True in a boolean context when the callable
    scaled on threads well enough for ``backend="thread"``."""

    def __init__(self, fn, threads, serial_s, parallel_s):
        self.fn = fn
        self.threads = threads
        self.serial_s = serial_s
        self.parallel_s = parallel_s
        self.speedup = serial_s / parallel_s if parallel_s > 0 else float("inf")
        # Half of the ideal gain: a callable that holds the GIL stays near 1.0x.
        self.releases = self.speedup >= 1 + 0.5 * (threads - 1)

    def __bool__(self):
        return self.releases

    def __repr__(self):
        return (
            f"GilVerdict(releases={self.releases}, speedup={self.speedup:.2f}, "
            f"threads={self.threads})"
        )

    def __str__(self):
        name = getattr(self.fn, "__name__", None) or repr(self.fn)
        if self.releases:
            advice = "it releases the GIL: backend='thread' suits it"
        else:
            advice = "it holds the GIL: use backend='process'"
        return (
            f"{name}: {self.threads} calls took {self.serial_s:.3f} s one after the other and "
            f"{self.parallel_s:.3f} s on {self.threads} threads ({self.speedup:.2f}x); {advice}"
        )


def releases_gil(fn, *args, threads=None, repeat=3, **kwargs) -> GilVerdict:
    """Measure whether ``fn(*args, **kwargs)`` runs faster on several threads.

    Runs ``threads`` calls one after the other, then ``threads`` calls at once on as many
    threads, ``repeat`` times each, and compares the best times. Choose a call that takes
    tens of milliseconds: shorter ones drown in thread start-up noise.

    Args:
        threads: how many threads (default: CPUs available, at least 2).

    Returns:
        A :class:`GilVerdict`; ``bool(verdict)`` says whether ``backend="thread"`` suits
        ``fn``, ``str(verdict)`` says so in a sentence.
    """
    if threads is None:
        threads = max(2, default_jobs())
    if threads < 2:
        raise UsageError("releases_gil needs at least 2 threads to compare")
    fn(*args, **kwargs)  # warm up: imports, caches, first-call costs

    def serial():
        t0 = time.perf_counter()
        for _ in range(threads):
            fn(*args, **kwargs)
        return time.perf_counter() - t0

    def parallel():
        barrier = threading.Barrier(threads + 1)
        errors = []

        def run():
            barrier.wait()
            try:
                fn(*args, **kwargs)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for t in workers:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in workers:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return elapsed

    best_serial = min(serial() for _ in range(repeat))
    best_parallel = min(parallel() for _ in range(repeat))
    return GilVerdict(fn, threads, best_serial, best_parallel)
