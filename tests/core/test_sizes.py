"""One grammar for every size option: memory_limit= and max_output= of run/spawn/Pool/
map_commands, and --memory-limit and --max-output of pardo run."""

import pytest

import pardo
from pardo._errors import UsageError
from pardo._run import parse_size

from pardo_cli import run as pardo_run  # tests/helpers, on sys.path through conftest.py

K, M, G, T = 2**10, 2**20, 2**30, 2**40


@pytest.mark.parametrize("text,size", [
    ("1", 1), ("512", 512), ("512K", 512 * K), ("512k", 512 * K), ("512KB", 512 * K),
    ("512KiB", 512 * K), ("512kib", 512 * K), ("64M", 64 * M), ("64 M", 64 * M),
    (" 2G ", 2 * G), ("1.5G", int(1.5 * G)), ("0.5K", 512), (".5K", 512), ("1T", T),
    ("3B", 3), ("7.", 7),
])
def test_grammar_reads(text, size):
    assert parse_size(text, "x") == size


@pytest.mark.parametrize("text", ["", " ", "M", "K512", "plenty", "1.2.3", "-1", "+1", "1e3",
                                  "inf", "nan", "1_000", "12Q", "1 GB extra", "1MM", "1 K B"])
def test_grammar_refuses(text):
    with pytest.raises(UsageError, match="'x': cannot read|x: cannot read"):
        parse_size(text, "x")


def test_ints_and_minimum():
    assert parse_size(4096, "x") == 4096
    assert parse_size(0, "x", minimum=0) == 0
    assert parse_size("0", "x", minimum=0) == 0
    with pytest.raises(UsageError, match="x must be at least 1 byte, not 0$"):
        parse_size(0, "x")
    with pytest.raises(UsageError, match="at least 1"):
        parse_size("0.0001K", "x")  # rounds down to 0 bytes
    for wrong in (True, 1.5, None, b"1M"):
        with pytest.raises(TypeError, match="x must be a number of bytes"):
            parse_size(wrong, "x")


def test_memory_limit_and_max_output_of_run_use_it():
    r = pardo.run(["head", "-c", "5000", "/dev/zero"], max_output="1KiB", memory_limit="1g")
    assert r.ok and len(r.stdout) == 1024 and r.output_truncated
    r = pardo.run(["echo", "x"], max_output=" 0 ")
    assert r.ok and r.stdout == b"" and r.output_truncated
    with pytest.raises(UsageError, match="memory_limit"):
        pardo.run(["true"], memory_limit="0")
    with pytest.raises(UsageError, match="max_output: cannot read"):
        pardo.run(["true"], max_output="lots")


def test_map_commands_uses_it():
    [r] = pardo.map_commands("head -c 3000 /dev/zero #{}", ["a"], max_output="2k")
    assert r.ok and len(r.stdout) == 2048


def test_command_line_uses_it():
    p = pardo_run(["--max-output", "1KiB", "head -c 5000 /dev/zero #{}", ":::", "a"])
    # 1KiB read as 1024 bytes; since issue 15 a task whose output was cut counts as failed
    assert p.returncode == 1 and len(p.stdout) == 1024, p.stderr
    assert b"cut at --max-output 1K;" in p.stderr
    p = pardo_run(["--memory-limit", "1.5G", "true", ":::", "a"])
    assert p.returncode == 0, p.stderr
    p = pardo_run(["--memory-limit", "plenty", "true", ":::", "a"])
    assert p.returncode == 255
    assert p.stderr.decode() == ("pardo run: --memory-limit: cannot read 'plenty' as a size; "
                                 "give bytes, or a number with K, M, G or T (e.g. 512M, 1.5G)\n")
