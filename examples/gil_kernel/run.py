"""Does gil_kernel scale on threads? Build it, ask pardo.releases_gil, run it on a pool.

    python examples/gil_kernel/run.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build  # noqa: E402
import pardo  # noqa: E402


def main():
    build.build()
    import gil_kernel

    n = 50_000_000
    print(pardo.releases_gil(gil_kernel.crunch, n))
    print(pardo.releases_gil(gil_kernel.crunch_holding_gil, n))

    done = []
    with pardo.Pool(backend="thread", on_progress=done.append) as pool:
        start = time.perf_counter()
        # pardo.progress as the C++ callback: each report crosses back into Python with
        # the GIL taken for just that call.
        hashes = list(pool.map(lambda k: gil_kernel.crunch(n + k, pardo.progress, n // 4),
                               range(8)))
        elapsed = time.perf_counter() - start
    print(f"8 calls on {pool.jobs} threads: {elapsed:.2f} s, {len(done)} progress reports, "
          f"{len(set(hashes))} distinct hashes")


if __name__ == "__main__":
    main()
