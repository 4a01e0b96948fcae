"""The protocol's messages over MPI (mpi4py), on a private duplicate of COMM_WORLD.

Sends are non-blocking (``isend``): two peers that send each other large messages at the
same moment would otherwise both wait in a rendezvous that neither receives. Everything
here runs on one thread per process (the loop that owns the transport); mpi4py asks MPI
for ``MPI_THREAD_MULTIPLE`` by default, which covers a thread other than the main one.
"""

from __future__ import annotations

import time

from . import _protocol
from ._load import load_mpi

_TAG = 0x70A0  # on our own communicator, so any tag would do; a distinctive one helps traces


class MPITransport(_protocol.Transport):
    """MPI point-to-point messages between the ranks of ``COMM_WORLD``."""

    def __init__(self):
        MPI = load_mpi()
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD.Dup()
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self.host = MPI.Get_processor_name()
        self._status = MPI.Status()
        self._pending = []  # isend requests not known complete

    def send(self, dest, msg):
        self._pending.append(self._comm.isend(msg, dest=dest, tag=_TAG))
        if len(self._pending) > 64:
            self._reap()

    def _reap(self):
        self._pending = [r for r in self._pending if not r.Test()]

    def poll(self):
        comm = self._comm
        if not comm.iprobe(source=self._MPI.ANY_SOURCE, tag=_TAG, status=self._status):
            if self._pending:
                self._reap()
            return None
        src = self._status.Get_source()
        return src, comm.recv(source=src, tag=_TAG)

    def flush(self, timeout):
        end = time.monotonic() + timeout
        backoff = _protocol.Backoff()
        while True:
            self._reap()
            if not self._pending:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(backoff.next())

    def abort(self, code):
        self._comm.Abort(code)
