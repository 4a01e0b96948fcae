"""GNU parallel's joblog: a TSV file with one row per finished job, and reading it back for
``--resume``, ``--resume-failed`` and ``--retry-failed``.

Columns (the header GNU writes): Seq, Host (``:`` for the local machine), Starttime (epoch
seconds, 3 decimals), JobRuntime (``%10.3f``), Send (0), Receive (bytes of output the
job wrote on stdout, when pardo captured it), Exitval,
Signal, Command. A job killed for its deadline is written as Exitval -1, Signal 15, as GNU
does. Each row goes to the file with one ``write`` so that a killed ``pardo`` leaves whole
rows behind, and every completed job is on disk before the next one is reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .._result import Status

__all__ = ["HEADER", "JobLog", "LoggedJob", "read_joblog", "exit_fields", "format_row"]

HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


@dataclass(frozen=True, slots=True)
class LoggedJob:
    seq: int
    exitval: int
    signal: int
    command: str

    @property
    def ok(self) -> bool:
        return self.exitval == 0 and self.signal == 0


def exit_fields(result) -> tuple[int, int]:
    """(Exitval, Signal) for a result, with GNU parallel's conventions."""
    st = result.status
    if st == Status.OK or st == Status.FAILED:
        return result.returncode or 0, 0
    if st == Status.TIMEOUT:
        return -1, result.signal or 15  # 9 when the tree ignored SIGTERM and needed SIGKILL
    if st == Status.ERROR:
        return 127, 0  # what sh reports for a command it cannot run
    if st == Status.CANCELLED:
        return -1, result.signal or 9
    return 0, result.signal or 0


def format_row(seq: int, started_at: float, runtime: float, exitval: int, signal: int,
               command: str, host: str = ":", received: int = 0) -> bytes:
    """One joblog row, as GNU parallel writes it (also used by ``pardo export``);
    ``received`` is GNU's Receive column, the bytes the task wrote on stdout."""
    row = (f"{seq}\t{host}\t{started_at:.3f}\t{runtime:10.3f}\t0\t{received}\t{exitval}\t"
           f"{signal}\t{command}\n")
    return row.encode("utf-8", "surrogateescape")


class JobLog:
    """An open joblog. ``append=True`` keeps existing rows (resume) and writes the header
    only when the file is empty.

    Args:
        path: the file, or ``-`` for stdout.
    """

    def __init__(self, path: str, *, append: bool = False):
        if path == "-":
            self._fd, self._own = 1, False
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
            flags |= os.O_APPEND if append else os.O_TRUNC
            self._fd, self._own = os.open(path, flags, 0o666), True
        size = os.fstat(self._fd).st_size if self._own else 0
        if append and size:
            self._drop_torn_row(path, size)
            size = os.fstat(self._fd).st_size
        if not append or size == 0:
            os.write(self._fd, HEADER.encode())

    @staticmethod
    def _drop_torn_row(path, size):
        # A pardo killed mid-write leaves a row without its newline; it recorded nothing
        # complete, so cut it off rather than glue the next row to it.
        with open(path, "rb+") as f:
            tail = min(size, 1 << 16)
            f.seek(size - tail)
            data = f.read(tail)
            if not data.endswith(b"\n"):
                cut = data.rfind(b"\n")
                f.truncate(size - tail + cut + 1 if cut >= 0 else 0)

    def record(self, result, command: str, received: int | None = None) -> None:
        """The row of a finished task: its :class:`pardo.Result` (with the batch's ``seq``)
        and the command line it ran; *received*: the bytes it wrote on stdout (default: the
        length of ``result.stdout``)."""
        exitval, signal = exit_fields(result)
        if received is None:
            received = len(result.stdout) if result.stdout else 0
        self.write(result.seq, result.started_at, result.duration, exitval, signal, command,
                   host=getattr(result, "host", ":"), received=received)

    def write(self, seq: int, started_at: float, runtime: float, exitval: int, signal: int,
              command: str, host: str = ":", received: int = 0) -> None:
        """One row; ``host`` is GNU's Host column (``:``, the local machine, by default;
        ``pardo run --mpi`` gives rank@hostname), ``received`` its Receive column."""
        os.write(self._fd, format_row(seq, started_at, runtime, exitval, signal, command,
                                      host, received))

    def close(self) -> None:
        if self._own and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


def read_joblog(path: str) -> dict[int, LoggedJob]:
    """Rows of an existing joblog by Seq (the last row wins for a Seq logged twice).
    A missing file reads as empty; a torn last row (pardo killed mid-write) is ignored."""
    jobs: dict[int, LoggedJob] = {}
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return jobs
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            cols = raw[:-1].decode("utf-8", "surrogateescape").split("\t", 8)
            if len(cols) < 9 or not cols[0].isdigit():
                continue  # header, or a continuation line of a command with a newline
            try:
                jobs[int(cols[0])] = LoggedJob(int(cols[0]), int(cols[6]), int(cols[7]), cols[8])
            except ValueError:
                continue
    return jobs
