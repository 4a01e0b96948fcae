"""pardo across the ranks of an MPI job: ``pardo run --mpi`` and ``Pool(backend="mpi")``.

The only part of pardo that imports mpi4py, and only when one of those is used.

- ``_protocol``: the messages between the scheduler (rank 0) and worker ranks, and the
  transport interface; ``_transport_mpi``: that interface over MPI.
- ``_dispatch``: rank 0's side: a thread that owns the transport, hands tasks to the ranks
  that have credit and hands results back.
- ``_serve``: a worker rank's loop, running what it is sent under its own local engine.
- ``_run_cli`` / ``_executor``: what ``pardo run --mpi`` and ``Pool(backend="mpi")`` use.

Other parts use the names exported here, and no others: ``enter`` (the CLI's ``--mpi``
hook) and ``MPIPool`` (what ``Pool(backend="mpi")`` makes), each imported on first use.
"""

from .._lazy import lazy_getattr as _lazy_getattr

__all__ = ["MPIPool", "enter"]

__getattr__ = _lazy_getattr(globals(), {"MPIPool": "._executor", "enter": "._run_cli"})
