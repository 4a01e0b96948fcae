"""Loading mpi4py on demand: importing ``mpi4py.MPI`` starts MPI, so only ``--mpi`` and
``Pool(backend="mpi")`` do it, and only this package imports mpi4py."""

from __future__ import annotations

import importlib.util
import os

from .._errors import MPIUnavailable

INSTALL_HINT = "pip install 'pardo[mpi]'"

# Set by the launchers in every process they start: MPICH/Intel MPI (Hydra's PMI), Open MPI,
# PMIx launchers, and Slurm's srun with an MPI plugin. Without any of them this process was
# started on its own, and initializing MPI would only make a world of one.
_LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
                 "HYDI_CONTROL_FD")


def require_mpi4py() -> None:
    """Raise :class:`MPIUnavailable` naming the extra to install when mpi4py is missing."""
    if importlib.util.find_spec("mpi4py") is None:
        raise MPIUnavailable(f"MPI needs mpi4py, which is not installed: {INSTALL_HINT}")


def under_launcher() -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process."""
    return any(k in os.environ for k in _LAUNCHER_ENV)


def launched_size() -> int | None:
    """How many processes the launcher says it started (None when it does not say)."""
    sizes = [int(v) for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")
             if (v := os.environ.get(k, "")).isdigit()]
    return max(sizes) if sizes else None


def check_world(size: int) -> None:
    """Refuse a world of one where the launcher started several processes: each would run
    the whole batch on its own. It happens when mpi4py was built for another MPI library
    than the launcher's, or under srun without an MPI plugin."""
    n = launched_size()
    if size == 1 and n is not None and n > 1:
        raise MPIUnavailable(
            f"the launcher started {n} processes but MPI sees a world of 1: mpiexec and "
            "mpi4py come from different MPI libraries, or srun needs --mpi=pmi2|pmix")


def load_mpi():
    """``mpi4py.MPI``, initializing MPI on first use."""
    require_mpi4py()
    from mpi4py import MPI

    return MPI


def world_size() -> int:
    """Processes in the MPI job (1 without a launcher, without starting MPI then)."""
    if not under_launcher():
        return 1
    return load_mpi().COMM_WORLD.Get_size()
