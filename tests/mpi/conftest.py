import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _mpi_installed():
    # CI installs the mpi extra (.ci/run); a missing one is a failure here, not a skip
    if importlib.util.find_spec("mpi4py") is None:
        pytest.fail("the MPI tests need mpi4py and mpiexec: pip install '.[test,mpi]'")
