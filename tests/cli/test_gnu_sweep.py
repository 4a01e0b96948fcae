"""The differential sweep: every command line of ``gnu_sweep.txt`` through GNU parallel and
through ``pardo run`` (both with ``-k``), in bash, in a fresh directory holding the files
GNU parallel's tutorial uses. Same stdout, byte for byte, and the same exit status.

Lines marked ``!differs TAG:`` are differences the README lists; for them the test asserts
that the two still differ, so a fixed difference shows up (and its mark must go).

CI runs every third line (a spread over every section of the file); ``PARDO_FULL_SWEEP=1``
runs all of them. Lines run concurrently, a few at a time, because most of the time is GNU
parallel's start-up.
"""

import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
PARALLEL = shutil.which("parallel")
pytestmark = pytest.mark.skipif(
    PARALLEL is None and not os.environ.get("CI"),
    reason="GNU parallel is not installed (apt-get install parallel)",
)
FULL = bool(os.environ.get("PARDO_FULL_SWEEP"))


def _pardo():
    exe = os.path.join(os.path.dirname(sys.executable), "pardo")
    if os.access(exe, os.X_OK):
        return f"{exe} run"
    return f"{sys.executable} -m pardo run"


def load_lines(path=HERE / "gnu_sweep.txt"):
    """(line number, command line, known-difference tag or None) for each case."""
    cases = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        tag = None
        if raw.startswith("!differs "):
            tag, _, raw = raw[len("!differs "):].partition(": ")
        cases.append((n, raw, tag))
    return cases


CASES = load_lines()
SELECTED = CASES if FULL else CASES[::3]


def make_fixtures(d: pathlib.Path):
    """The files of GNU parallel's tutorial (abc-file, num30000, tsv-file.tsv...)."""
    (d / "abc-file").write_text("A\nB\nC\n")
    (d / "def-file").write_text("D\nE\nF\n")
    (d / "abc0-file").write_bytes(b"A\0B\0C\0")
    (d / "abc_-file").write_text("A_B_C_")
    (d / "tsv-file.tsv").write_text("f1\tf2\nA\tB\nC\tD\n")
    (d / "csv-file").write_text("name,value\nx,1\ny,2\n")
    (d / "passwd-file").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                   "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    for n in (8, 128, 30000):
        (d / f"num{n}").write_text("".join(f"{i}\n" for i in range(1, n + 1)))
    (d / "num_%header").write_text("%head1\n%head2\n" + "".join(f"{i}\n" for i in range(1, 11)))


def run_line(line, tool, workdir):
    """Run one sweep line with `parallel` standing for *tool*; (exit status, stdout)."""
    workdir.mkdir(parents=True)
    make_fixtures(workdir)
    env = dict(os.environ, PARALLEL_SHELL="/bin/sh", PARALLEL_HOME=str(workdir / ".parallel"),
               LC_ALL="C.UTF-8", SWEEP_TOOL=tool)
    env.pop("PARALLEL", None)
    script = 'parallel() { $SWEEP_TOOL "$@"; }\n' + line + "\n"
    try:
        p = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=120)
    except subprocess.TimeoutExpired:
        return ("timeout", b"")
    return p.returncode, p.stdout


def run_sweep(cases, tmp, workers=4):
    """{line number: (gnu, pardo)} for *cases*, run a few at a time."""
    gnu_tool = f"{PARALLEL} --will-cite -k"
    pardo_tool = f"{_pardo()} -k"

    def both(case):
        n, line, _ = case
        return n, (run_line(line, gnu_tool, tmp / f"{n}-gnu"),
                   run_line(line, pardo_tool, tmp / f"{n}-pardo"))

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return dict(ex.map(both, cases))


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
