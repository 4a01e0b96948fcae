"""Where a batch's jobs come from: input records numbered 1, 2, ... (``{#}``), less those a
joblog or a job store says are done (``--resume``, ``--resume-failed``), or the failed
commands of a joblog or store run again (``--retry-failed``); read on a thread of their own
when the input can block."""

from __future__ import annotations

import os
import queue
import threading

from .._errors import BatchError
from .inputs import encode

# GNU parallel's options for picking up where a joblog left off.
RESUME_MODES = ("resume", "resume-failed", "retry-failed")


class Job:
    """One job of a batch: its inputs and, while it runs, its task and job slot.

    Attributes:
        seq: the job number (``{#}``, the joblog's Seq).
        args: the input values (a tuple of str).
        argv: a fixed command (from ``--retry-failed``), else None: rendered per attempt.
        slot: the GNU job slot (``{%}``) of the current attempt; 0 while the engine holds
            the task for want of a free slot.
        attempts: runs so far (``--retries``).
        task: the :class:`pardo.Task` of the attempt in flight.
        started: when the attempt started, by the scheduler's clock (``N%`` deadlines).
        kill_reason: "timeout" once the scheduler ended it for an ``N%`` deadline, "stop"
            once a gentle stop (Ctrl-C, ``--halt now``) sent it SIGTERM.
        result: the final Result, once the job is done.
        shell_line: the command line, once rendered.
        pipes: line mode: {read fd: [stream number, pending partial line]}.
        last: the Result of the previous attempt, while a retry is in flight.
        spool: the output files (fds) of the attempt in flight, in spool mode.
        input: ``--pipe``: the block fed to the task's stdin, until the job is done.
        stdin: ``--round-robin``: the read end of the pipe that is the task's stdin, until
            the task has started.
        skipped: a perl expression called ``skip()``: the job runs ``true`` and counts as
            failed with Exitval -2, as in GNU parallel.
    """

    __slots__ = ("seq", "args", "slot", "attempts", "task", "started", "kill_reason", "result",
                 "argv", "shell_line", "pipes", "last", "spool", "input", "skipped", "stdin")

    def __init__(self, seq, args, argv=None, input=None, stdin=None):
        self.seq = seq
        self.stdin = stdin
        self.args = args
        self.input = input
        self.argv = argv
        self.slot = 0
        self.attempts = 0
        self.task = None
        self.started = 0.0
        self.kill_reason = None
        self.result = None
        self.shell_line = None
        self.pipes = None
        self.last = None
        self.spool = None
        self.skipped = False


def numbered_jobs(arg_groups, skip=None, blocks=False):
    """A job per argument tuple, numbered from 1, leaving out the seqs in ``skip``; with
    *blocks* (``--pipe``), a job per block of bytes, fed to its stdin."""
    seq = 0
    for args in arg_groups:
        seq += 1
        if skip is not None and seq in skip:
            continue
        yield Job(seq, (), input=args) if blocks else Job(seq, args)


def read_resume(joblog, mode):
    """The rows of ``joblog`` that resuming in ``mode`` needs, by Seq ({} without a file)."""
    if mode not in RESUME_MODES:
        raise BatchError(f"resume must be one of {', '.join(RESUME_MODES)}, not {mode!r}")
    if joblog is None:
        raise BatchError(f"resuming ({mode}) needs a joblog to read: give --joblog FILE")
    from .._store import read_joblog

    return read_joblog(joblog)


def skipped_seqs(mode, logged):
    """The input jobs that resuming in ``mode`` leaves out: those ``logged`` has
    (``resume``) or has seen succeed (``resume-failed``); None for ``retry-failed``, which
    runs logged commands instead of inputs, and an empty set without ``mode``."""
    if mode is None:
        return set()
    if mode == "resume":
        return set(logged)
    if mode == "resume-failed":
        return {seq for seq, row in logged.items() if row.ok}
    return None


def planned_jobs(arg_groups, mode, logged, shell: bytes, blocks=False):
    """The jobs to run: the input jobs less those :func:`skipped_seqs` leaves out, or for
    ``retry-failed`` the failed logged commands themselves, with their old numbers (inputs
    are ignored). *blocks*: ``arg_groups`` are ``--pipe`` blocks (bytes), one per job's
    stdin."""
    skip = skipped_seqs(mode, logged)
    if skip is not None:
        return numbered_jobs(arg_groups, skip=skip or None, blocks=blocks)
    return (Job(row.seq, (), [shell, b"-c", encode(row.command)])
            for row in sorted(logged.values(), key=lambda row: row.seq) if not row.ok)


def stored_jobs(arg_groups, mode, store, shell: bytes, blocks=False):
    """The jobs to run with a job store (the store part's ``RunStore``): every input job
    (``mode`` None), less those the store has (``resume``) or has seen succeed
    (``resume-failed``), each job's inputs checked against the stored run's; or the
    store's failed tasks with their inputs and commands (``retry-failed``)."""
    if mode == "retry-failed":
        return (Job(seq, args, [shell, b"-c", encode(cmd)]) for seq, args, cmd in store.failed)
    return numbered_jobs(store.checked(arg_groups), skip=store.skip(), blocks=blocks)


NOT_YET = object()  # Prefetch: no job read yet; the wake fd says when there is one
_END = object()


class Prefetch:
    """Reads jobs from a possibly blocking iterator on a daemon thread into a bounded queue.

    ``next()`` never blocks: it gives a job, ``NOT_YET`` (the thread writes to the wake fd
    when one arrives), or raises StopIteration at the end. An exception raised by the
    iterator is re-raised in the loop's thread.
    """

    def __init__(self, it, wake_fd, size):
        self._q = queue.Queue(size)
        self._wake_fd = wake_fd
        # The thread may still be blocked on a read when the batch ends; once closed it
        # must not write to the wake fd, whose number may by then belong to another file.
        self._lock = threading.Lock()
        self._closed = False
        self._t = threading.Thread(target=self._run, args=(iter(it),), daemon=True,
                                   name="pardo-input")
        self._t.start()

    def _run(self, it):
        try:
            for job in it:
                self._q.put(job)
                self._wake()
        except BaseException as e:  # noqa: BLE001 - handed to the loop's thread
            self._q.put(e)
        self._q.put(_END)
        self._wake()

    def _wake(self):
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._wake_fd, b"i")
            except OSError:
                pass  # full: a wake-up is pending already

    def close(self):
        with self._lock:
            self._closed = True

    def __iter__(self):
        return self

    def __next__(self):
        try:
            item = self._q.get_nowait()
        except queue.Empty:
            return NOT_YET
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item
