"""The checked-in type stubs of pardo._engine match the compiled module.

Regenerate with: pybind11-stubgen pardo._engine -o /tmp/stubs &&
cp /tmp/stubs/pardo/_engine.pyi src/pardo/_engine.pyi
"""

import subprocess
import sys
from pathlib import Path

STUB = Path(__file__).resolve().parents[2] / "src" / "pardo" / "_engine.pyi"


def _without_imports(text):
    return "\n".join(ln for ln in text.splitlines()
                     if not ln.startswith(("import ", "from ")))


def test_stubs_are_current(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pybind11_stubgen", "pardo._engine", "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    fresh = _without_imports((tmp_path / "pardo" / "_engine.pyi").read_text())
    # Import lines depend on which typing helpers the environment has; the API does not.
    assert fresh == _without_imports(STUB.read_text()), (
        "src/pardo/_engine.pyi is out of date; regenerate it (see this test's docstring)")
