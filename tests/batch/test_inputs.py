"""Input sources: product, links, files, delimiters, columns, -N grouping, and streaming."""

import io
import itertools
import subprocess
import sys

import pytest

from pardo._batch.inputs import Source, group_records, records
from pardo._errors import InputError


def recs(*sources, **kw):
    return list(records(list(sources), **kw))


def test_cartesian_product_last_source_fastest():
    assert recs(Source(["a", "b"]), Source(["1", "2"])) == [
        ("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]


def test_linked_sources_stop_at_the_shortest():
    assert recs(Source(["a", "b", "c"]), Source(["1", "2"], linked=True)) == [
        ("a", "1"), ("b", "2")]


def test_link_then_product():
    got = recs(Source(["a", "b"]), Source(["1", "2"], linked=True), Source(["x"]))
    assert got == [("a", "1", "x"), ("b", "2", "x")]


def test_file_source_lines_keep_blanks_and_bytes(tmp_path):
    f = tmp_path / "in"
    f.write_bytes(b"a\n\n\xff b\nlast-no-newline")
    got = recs(Source(path=str(f)))
    assert [tuple(v.encode("utf-8", "surrogateescape") for v in r) for r in got] == [
        (b"a",), (b"",), (b"\xff b",), (b"last-no-newline",)]


def test_other_delimiter_across_chunks(tmp_path):
    f = tmp_path / "in"
    vals = [f"v{i}" * 50 for i in range(3000)]
    f.write_bytes("\0".join(vals).encode())
    assert [r[0] for r in recs(Source(path=str(f)), delimiter=b"\0")] == vals


def test_stdin_source():
    s = Source(path="-")
    s.open(stdin=io.BytesIO(b"x\ny\n"))
    assert recs(s) == [("x",), ("y",)]


def test_missing_file_is_reported_on_open():
    with pytest.raises(InputError, match="cannot open input file '/no/such'"):
        Source(path="/no/such").open()


def test_colsep():
    assert recs(Source(["a,b", "c"]), colsep=",") == [("a", "b"), ("c",)]
    assert recs(Source(["a  b"]), colsep=" +") == [("a", "b")]


@pytest.mark.parametrize("n,expected", [
    (None, [("a",), ("b",), ("c",)]),
    (2, [("a", "b"), ("c",)]),
    (0, [(), (), ()]),
])
def test_group_records(n, expected):
    assert list(group_records(iter([("a",), ("b",), ("c",)]), n)) == expected


def test_first_source_streams():
    # an endless first source must not be read ahead: product with a finite second source
    endless = Source(values=None, path=None)
    endless.iter_values = lambda delimiter=b"\n": (str(i) for i in itertools.count())
    it = records([endless, Source(["x", "y"])])
    assert list(itertools.islice(it, 3)) == [("0", "x"), ("0", "y"), ("1", "x")]


def test_million_line_input_streams_in_flat_memory(tmp_path):
    """1,000,000 lines through the whole CLI pipeline (inputs, -N, templates, output) with
    --dry-run, against 10,000 lines: peak RSS must not grow with the input."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        for i in range(0, 1_000_000, 10_000):
            f.write(b"".join(b"line-%d\n" % j for j in range(i, i + 10_000)))
    small = tmp_path / "small"
    with open(small, "wb") as f:
        f.write(b"".join(b"line-%d\n" % j for j in range(10_000)))

    def peak_rss(path):
        code = ("import resource, sys; from pardo._cli.run import main; rc = main(sys.argv[1:]);"
                "sys.stderr.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss));"
                "sys.exit(rc)")
        p = subprocess.run([sys.executable, "-c", code, "--dry-run", "echo", "{#}", "{.}",
                            "::::", str(path)], capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return int(p.stderr.decode().split()[-1]), p.stdout

    small_kb, _ = peak_rss(small)
    big_kb, out = peak_rss(big)
    assert out.count(b"\n") == 1_000_000
    assert out.endswith(b"echo 1000000 line-999999\n")
    assert big_kb - small_kb < 10 * 1024, (small_kb, big_kb)
