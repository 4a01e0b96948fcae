"""The machinery of the differential sweep (tests/cli/test_gnu_sweep.py) and of the
differential tests (tests/cli/test_gnu_compat.py): a command line run in bash through GNU
parallel and through ``pardo run``, in a fresh directory holding the files GNU parallel's
tutorial uses."""

import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys

SWEEP_FILE = pathlib.Path(__file__).parent.parent / "cli" / "gnu_sweep.txt"
PARALLEL = shutil.which("parallel")


def pardo_shell_command():
    exe = os.path.join(os.path.dirname(sys.executable), "pardo")
    if os.access(exe, os.X_OK):
        return f"{exe} run"
    return f"{sys.executable} -m pardo run"


def load_lines(path=SWEEP_FILE):
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
    pardo_tool = f"{pardo_shell_command()} -k"

    def both(case):
        n, line, _ = case
        return n, (run_line(line, gnu_tool, tmp / f"{n}-gnu"),
                   run_line(line, pardo_tool, tmp / f"{n}-pardo"))

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return dict(ex.map(both, cases))
