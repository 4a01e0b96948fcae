"""``pardo.Pool(backend="mpi")`` in a script under a real mpiexec: calls run in worker
processes of the other ranks, a segfault or a deadline fails one call alone, and the
Executor contract holds."""

from __future__ import annotations

import json
import textwrap

import pytest
from mpi_support import mpirun

SCRIPT = textwrap.dedent('''
    import concurrent.futures, ctypes, json, os, sys, time
    import pardo

    def where(x):
        # the rank process has MPI loaded; a pool worker process never does
        return x * x, os.environ.get("PMI_RANK"), "mpi4py.MPI" in sys.modules

    def crash():
        ctypes.string_at(0)

    def boom():
        raise KeyError("k")

    pool = pardo.Pool(backend="mpi", jobs=2)
    out = {"backend": pool.backend}
    res = list(pool.map(where, range(40)))
    out["squares"] = [r[0] for r in res]
    out["ranks"] = sorted({r[1] for r in res})
    out["in_rank_process"] = any(r[2] for r in res)
    crashed = pool.submit(crash)
    others = [pool.submit(where, i) for i in range(10)]
    try:
        crashed.result(timeout=60)
    except Exception as e:
        out["crash"] = type(e).__name__
    out["others"] = [f.result(timeout=60)[0] for f in others]
    t0 = time.monotonic()
    try:
        pool.schedule(time.sleep, (30,), timeout=0.3).result(timeout=60)
    except Exception as e:
        out["late"] = [type(e).__name__, time.monotonic() - t0 < 10]
    try:
        pool.submit(boom).result()
    except KeyError as e:
        out["error"] = [repr(e), getattr(e, "__notes__", [])]
    done = concurrent.futures.as_completed([pool.submit(where, i) for i in range(5)])
    out["as_completed"] = sorted(f.result()[0] for f in done)
    pool.shutdown(wait=True)
    try:
        pool.submit(where, 1)
    except RuntimeError:
        out["after_shutdown"] = "refused"
    print(json.dumps(out))
''')


@pytest.mark.parametrize("n", [1, 3])
def test_calls_run_in_rank_pools_and_fail_alone(n, tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    import sys

    got = mpirun(n, [sys.executable, str(script)], timeout=120)
    assert got.returncode == 0, got.stderr.decode()
    lines = got.stdout.decode().splitlines()
    assert len(lines) == 1  # the code after Pool() ran on rank 0 only
    out = json.loads(lines[0])
    assert out["squares"] == [i * i for i in range(40)]
    assert out["ranks"] == (["1", "2"] if n == 3 else ["0"])
    assert out["in_rank_process"] is False
    assert out["crash"] == "TaskCrashed"
    assert out["others"] == [i * i for i in range(10)]
    assert out["late"] == ["TaskTimeout", True]
    assert out["error"][0] == "KeyError('k')"
    if n == 3:
        assert out["error"][1][0].startswith("(on MPI rank ")
    assert out["as_completed"] == [i * i for i in range(5)]
    assert out["after_shutdown"] == "refused"
    assert out["backend"] == "mpi"
