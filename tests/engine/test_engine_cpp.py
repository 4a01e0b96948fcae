"""Build and run the engine's own C++ tests (engine/tests/engine_tests.cpp) against the
engine sources of this checkout and the installed shepherd."""

import shutil
import subprocess
from pathlib import Path

import pytest

from pardo import _supervisor

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "engine"


def test_engine_cpp(tmp_path):
    if not ENGINE.is_dir():
        pytest.fail("engine sources not found beside the tests")
    cxx = shutil.which("g++") or shutil.which("c++")
    assert cxx, "a C++ compiler is needed to build the engine tests"
    # The engine library: every source but the bindings, the shepherd program and the tests.
    sources = sorted(p for p in ENGINE.rglob("*") if p.suffix in (".cpp", ".S")
                     and p.name != "bindings.cpp" and p.parent.name not in ("shepherd", "tests"))
    exe = tmp_path / "engine_tests"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-pthread", "-I", str(ENGINE),
                    "-DPARDO_FAULT_INJECTION", "-o", str(exe),
                    str(ENGINE / "tests" / "engine_tests.cpp"), *map(str, sources)],
                   check=True, capture_output=True, timeout=300)
    proc = subprocess.run([str(exe), _supervisor.shepherd_path()], capture_output=True,
                          text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr
    assert "engine tests passed" in proc.stdout
