"""The same command lines through GNU parallel and ``pardo run``, with ``-k``: stdout must be
byte-identical, and so must the exit status. GNU parallel runs commands with /bin/sh here
(PARALLEL_SHELL), which is what pardo uses."""

import os
import shutil
import subprocess

import pytest

from pardo_cli import pardo_cmd  # tests/helpers, on sys.path through conftest.py

PARALLEL = shutil.which("parallel")
# A developer without GNU parallel gets a loud skip; CI (which installs it in .ci/run) never
# skips: a missing anchor there is a failure, not a gap.
pytestmark = pytest.mark.skipif(
    PARALLEL is None and not os.environ.get("CI"),
    reason="GNU parallel is not installed (apt-get install parallel)",
)


@pytest.fixture(autouse=True)
def _parallel_present():
    assert PARALLEL is not None, (
        "GNU parallel is missing: .ci/run installs it (apt-get install parallel)")

HOSTILE = ["a b", "it's", '"q"', "$(id)", "`id`", "; rm -rf x", "*", "?", "[a]", "~", "a\\b",
           "-n", "--help", "", " ", "tab\there", "$HOME", "a&b|c>d<e", "é ü", "{}", "'",
           "!x", "#c", "a=b", "\\", "x\\ny"]

CASES = [
    ["echo", ":::", "a", "b c", "d"],
    ["echo", ":::"] + HOSTILE,
    ["echo", "x{}y", ":::"] + HOSTILE,
    ["printf '[%s]\\n'", ":::"] + HOSTILE,
    ["echo", "{.}", "{/}", "{//}", "{/.}", ":::", "a/b.c", "/x", "dir/", "a.b.c", ".rc",
     "no_ext", "d.d/f", "/", "a//b"],
    ["echo", "{#}", "{}", ":::", "a", "b", "c"],
    ["echo", ":::", "a", "b", ":::", "1", "2"],
    ["echo", "{2}", "{1}", ":::", "a", "b", ":::", "1", "2"],
    ["echo", ":::", "a", "b", "c", ":::+", "1", "2", "3"],
    ["echo", "{1}-{2}-{3}", ":::", "a", "b", ":::+", "1", "2", ":::", "x", "y"],
    ["-N2", "echo", ":::", "a", "b", "c", "d", "e"],
    ["-N2", "echo", "x{}y", "{2}", ":::", "a", "b c", "d"],
    ["-N0", "echo", "hi", ":::", "a", "b"],
    ["--colsep", ",", "echo", "{2}", "{1}", ":::", "a,b", "c,d e", "f"],
    ["--colsep", ",", "echo", ":::", "a,b", "c,d e"],
    ["--tag", "echo", ":::", "a", "b c"],
    ["--tag", "echo", ":::", "a", ":::", "b"],
    ["--tagstring", "<{}>", "echo", ":::", "a", "x y"],
    ["-I", "@@", "echo", "x@@y", "{}", ":::", "a", "b c"],
    ["echo {} | tr a-z A-Z", ":::", "abc", "x y"],
    ["echo $0 {}", ":::", "a"],
    ["echo", "{-1}", "{-2}", ":::", "a", ":::", "b"],
    ["{}", ":::", "echo a", "echo 'b c'"],
    [":::", "echo z"],
    ["--dry-run", "echo", "x{}", ":::", "a b", "c"],
    ["exit {}", ":::", "0", "1", "2"],
    ["sh", "-c", "exit {}", ":::", "3", "0"],
    ["--halt", "now,fail=1", "-j1", "exit {}", ":::", "0", "4", "0"],
    ["--halt", "soon,success=1", "-j1", "exit {}", ":::", "3", "0", "5"],
    ["-v", "echo", ":::", "a"],
    ["echo", "{}", "{}", ":::", "a b"],
    ["echo", "-{}-", ":::", "-n", "-e"],
    ["-n2", "echo", ":::", "a", "b", "c"],
]


def _run(cmd, stdin=None):
    env = dict(os.environ, PARALLEL_SHELL="/bin/sh", PARALLEL_HOME="/tmp/.parallel-test",
               LC_ALL="C.UTF-8")
    p = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=60)
    return p.returncode, p.stdout


@pytest.mark.parametrize("args", CASES, ids=[" ".join(c)[:60] for c in CASES])
def test_same_output_as_gnu_parallel(args):
    gnu = _run([PARALLEL, "--will-cite", "-k"] + args)
    ours = _run(pardo_cmd() + ["-k"] + args)
    assert gnu[1] or "exit" in " ".join(args)  # the case must exercise something
    assert ours == gnu


STDIN_CASES = [
    (["echo"], b"a\nb c\n\nd"),
    (["echo", "{}x"], b"one\ntwo\n"),
    (["-0", "echo"], b"a\nb\0c\0"),
    (["-d", ",", "echo"], b"a,b,c"),
    (["--colsep", "\t", "echo", "{2}"], b"a\tb\nc\td\n"),
    (["-N3", "echo"], b"1\n2\n3\n4\n5\n6\n7\n"),
    (["echo", ":::", "x", "::::", "-"], b"1\n2\n"),
    (["-r", "echo"], b"a\n\n  \nb\n"),
]


@pytest.mark.parametrize("args,stdin", STDIN_CASES, ids=[" ".join(c[0]) for c in STDIN_CASES])
def test_same_output_from_stdin(args, stdin):
    gnu = _run([PARALLEL, "--will-cite", "-k"] + args, stdin)
    ours = _run(pardo_cmd() + ["-k"] + args, stdin)
    assert ours == gnu


def test_input_files_and_arg_file(tmp_path):
    f1 = tmp_path / "a.txt"
    f1.write_bytes(b"x\ny z\n")
    f2 = tmp_path / "b.txt"
    f2.write_bytes(b"1\n2\n")
    for args in (["echo", "::::", str(f1), str(f2)], ["-a", str(f1), "echo"],
                 ["echo", "::::", str(f1), "::::+", str(f2)],
                 ["echo", ":::", "q", "::::", str(f1)]):
        gnu = _run([PARALLEL, "--will-cite", "-k"] + args)
        ours = _run(pardo_cmd() + ["-k"] + args)
        assert ours == gnu, args


def test_joblog_rows_match(tmp_path):
    """Same columns, same Exitval/Signal/Command for ok, failing and timed-out jobs."""
    args = ["--timeout", "1", ":::", "exit 0", "exit 3", "sleep 5"]
    rows = {}
    for name, cmd in (("gnu", [PARALLEL, "--will-cite", "-k"]), ("pardo", pardo_cmd() + ["-k"])):
        log = tmp_path / f"{name}.log"
        _run(cmd + ["--joblog", str(log)] + args)
        lines = log.read_text().splitlines()
        lines[1:] = sorted(lines[1:], key=lambda line: int(line.split("\t")[0]))
        rows[name] = [lines[0]] + [
            "\t".join(c for i, c in enumerate(line.split("\t")) if i not in (2, 3))
            for line in lines[1:]
        ]
        for line in lines[1:]:
            start, runtime = line.split("\t")[2:4]
            assert len(start.split(".")[1]) == 3 and len(runtime) == 10
    assert rows["pardo"] == rows["gnu"]
