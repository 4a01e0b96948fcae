"""The differential sweep: every command line of ``gnu_sweep.txt`` through GNU parallel and
through ``pardo run`` (both with ``-k``), in bash, in a fresh directory holding the files
GNU parallel's tutorial uses. Same stdout, byte for byte, and the same exit status.

Lines marked ``!differs TAG:`` are differences the README lists; for them the test asserts
that the two still differ, so a fixed difference shows up (and its mark must go).

CI runs every third line (a spread over every section of the file); ``PARDO_FULL_SWEEP=1``
runs all of them. Lines run concurrently, a few at a time, because most of the time is GNU
parallel's start-up.
"""

import os
import pathlib
import sys

import pytest
from gnu_sweep import PARALLEL, load_lines, run_sweep  # tests/helpers

HERE = pathlib.Path(__file__).parent
pytestmark = pytest.mark.skipif(
    PARALLEL is None and not os.environ.get("CI"),
    reason="GNU parallel is not installed (apt-get install parallel)",
)
FULL = bool(os.environ.get("PARDO_FULL_SWEEP"))

CASES = load_lines()
SELECTED = CASES if FULL else CASES[::3]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    assert PARALLEL is not None, "GNU parallel is missing: .ci/run installs it"
    return run_sweep(SELECTED, tmp_path_factory.mktemp("sweep"))


def test_sweep_file_is_large_and_well_formed():
    assert len(CASES) >= 200
    tags = [t for _, _, t in CASES if t]
    readme = (HERE.parent.parent / "README.md").read_text()
    for t in tags:
        assert f"`{t}`" in readme, f"known difference {t} is not explained in the README"


@pytest.mark.parametrize("case", SELECTED, ids=[f"L{n}" for n, _, _ in SELECTED])
def test_same_as_gnu_parallel(sweep, case):
    n, line, tag = case
    gnu, ours = sweep[n]
    if tag:
        assert ours != gnu, f"line {n} now agrees with GNU parallel: remove its !differs mark"
    else:
        assert ours == gnu, line


if __name__ == "__main__":
    # python tests/cli/test_gnu_sweep.py [--all]: print the agreement rate and the lines
    # that differ (the figure the README reports is over the whole file).
    import tempfile

    chosen = CASES if "--all" in sys.argv else SELECTED
    with tempfile.TemporaryDirectory() as t:
        res = run_sweep(chosen, pathlib.Path(t))
    same = 0
    for n, line, tag in chosen:
        gnu, ours = res[n]
        if gnu == ours:
            same += 1
        else:
            print(f"L{n}{' [' + tag + ']' if tag else ''}: {line}\n   gnu   {gnu!r:.300}\n"
                  f"   pardo {ours!r:.300}")
    print(f"identical: {same}/{len(chosen)} = {100 * same / len(chosen):.1f}%")
