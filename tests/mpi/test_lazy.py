"""Importing pardo never starts MPI, and --mpi without mpi4py says what to install."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pardo._cli.run
from pardo._mpi import _load


def test_importing_pardo_and_its_mpi_package_does_not_import_mpi4py():
    code = ("import sys, pardo, pardo._mpi, pardo._mpi._dispatch, pardo._mpi._serve, "
            "pardo._mpi._run_cli, pardo._mpi._load; pardo.Pool; pardo.map_commands; "
            "print(sorted(m for m in sys.modules if m.startswith('mpi4py')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_mpi_without_mpi4py_is_a_one_line_error_naming_the_extra(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mpi4py" else real(name, *a))
    assert pardo._cli.run.main(["--mpi", "true", ":::", "a"]) == 255
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "mpi4py" in err and "pip install 'pardo[mpi]'" in err


def test_no_launcher_means_a_world_of_one_without_starting_mpi(monkeypatch):
    for k in _load._LAUNCHER_ENV:
        monkeypatch.delenv(k, raising=False)
    assert _load.world_size() == 1
    assert "mpi4py.MPI" not in sys.modules


def test_a_launcher_of_several_processes_and_a_world_of_one_is_refused():
    # a bare srun of 3 tasks (no MPI plugin) looks like this from inside: every process
    # would otherwise run the whole batch alone
    from mpi_support import PARDO, mpirun

    got = mpirun(1, ["env", "SLURM_NTASKS=3", PARDO, "run", "--mpi", "echo",
                     ":::", "a"], timeout=60)
    assert got.returncode == 255
    assert b"MPI sees a world of 1" in got.stderr and got.stdout == b""
