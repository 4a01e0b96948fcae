"""Outputs kept in files beside the store are read a chunk at a time: ``pardo show`` and
``pardo export`` stay small in memory whatever a task printed, and what they write is the
same, byte for byte, as the whole record would give."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys

import pytest
from storehelp import make_result

from pardo._store import StoreReader, StoreSink, _read, _views, export, show_text

from pardo_cli import pardo_cmd

OUT = 240 << 20  # stdout of the big task: "ab\n" * OUT/3 (a whole number of lines)
ERR = 3 << 20  # stderr: "x" * ERR, then one byte that is not UTF-8 (base64 in exports)
BOUND = 100 << 20  # peak RSS allowed to a reader (whole in memory it was over 1 GiB)


def _peak_rss_to_file(cmd, path, timeout=300):
    """Run *cmd* with its stdout into *path* from a fresh small interpreter; return (exit
    status, the command's peak RSS in bytes: ru_maxrss of the probe's children)."""
    probe = ("import resource, subprocess, sys\n"
             "with open(sys.argv[1], 'wb') as f:\n"
             "    rc = subprocess.run(sys.argv[2:], stdout=f).returncode\n"
             "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n")
    p = subprocess.run([sys.executable, "-S", "-c", probe, str(path), *cmd],
                       capture_output=True, text=True, timeout=timeout)
    rc, rss = p.stdout.split()
    return int(rc), int(rss)


class _Cursor:
    """Reads a file from the front, checking what comes next against expectations, a
    chunk at a time (the files are hundreds of MiB)."""

    def __init__(self, path):
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.pos = 0

    def close(self):
        self._f.close()

    def skip_to(self, marker: bytes, within=1 << 16):
        head = self._f.read(within)
        i = head.find(marker)
        assert i >= 0, (marker, head[:300])
        self.pos += i + len(marker)
        self._f.seek(self.pos)

    def expect(self, data: bytes):
        got = self._f.read(len(data))
        assert got == data, (self.pos, got[:200], data[:200])
        self.pos += len(data)

    def expect_repeated(self, unit: bytes, count: int):
        block = unit * ((1 << 20) // len(unit))
        left = count * len(unit)
        while left:
            want = block[:min(len(block), left)]
            got = self._f.read(len(want))
            assert got == want, f"differs within {len(want)} bytes at offset {self.pos}"
            self.pos += len(want)
            left -= len(want)

    def expect_end(self):
        assert self._f.read(1) == b"", self.pos


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    db = str(d / "s.db")
    cmd = (f"yes {{}} | head -c {OUT}; "
           f"{{ head -c {ERR} /dev/zero | tr '\\0' x; printf '\\377'; }} >&2")
    p = subprocess.run(pardo_cmd() + ["--store", db, cmd, ":::", "ab"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert p.returncode == 0, p.stderr
    names = sorted(os.listdir(db + ".out"))
    assert names == ["1-1-1.stderr", "1-1-1.stdout"]  # both kept in files
    return db


def test_show_streams_a_big_output(big_store, tmp_path):
    out = tmp_path / "show.txt"
    rc, rss = _peak_rss_to_file([sys.executable, "-m", "pardo", "show", big_store, "1"], out)
    assert rc == 0
    assert rss < BOUND, f"pardo show: peak RSS {rss >> 20} MiB"
    c = _Cursor(out)
    try:
        c.skip_to(f"  --- stdout ({OUT} bytes)\n".encode())
        c.expect_repeated(b"ab\n", OUT // 3)
        c.expect(f"\n  --- stderr ({ERR + 1} bytes)\n".encode())
        c.expect_repeated(b"x", ERR)
        c.expect("\ufffd\n(no newline at end)\n".encode())
        c.expect_end()
    finally:
        c.close()


def test_jsonl_export_streams_a_big_output(big_store, tmp_path):
    out = tmp_path / "x.jsonl"
    rc, rss = _peak_rss_to_file([sys.executable, "-m", "pardo", "export", big_store,
                                 "--format", "jsonl"], out)
    assert rc == 0
    assert rss < BOUND, f"pardo export --format jsonl: peak RSS {rss >> 20} MiB"
    c = _Cursor(out)
    try:
        c.expect(b'{"seq": 1, "args": ["ab"], ')
        c.skip_to(b'"stdout": "')
        c.expect_repeated(b"ab\\n", OUT // 3)
        c.expect(b'", "stderr": null, "output_truncated": false, "run": 1, '
                 b'"stderr_base64": "')
        c.expect_repeated(base64.b64encode(b"xxx"), ERR // 3)
        c.expect(base64.b64encode(b"\xff") + b'"}\n')
        c.expect_end()
    finally:
        c.close()


def test_csv_export_streams_a_big_output(big_store, tmp_path):
    out = tmp_path / "x.csv"
    rc, rss = _peak_rss_to_file([sys.executable, "-m", "pardo", "export", big_store,
                                 "--format", "csv"], out)
    assert rc == 0
    assert rss < BOUND, f"pardo export --format csv: peak RSS {rss >> 20} MiB"
    c = _Cursor(out)
    try:
        c.skip_to(b"\r\n1,")  # the header, then the row of task 1
        c.skip_to(b',"')  # stdout holds newlines: quoted
        c.expect_repeated(b"ab\n", OUT // 3)
        c.expect(b'",,0,1,,')  # stderr empty (it is in stderr_base64), not cut, run 1
        c.expect_repeated(base64.b64encode(b"xxx"), ERR // 3)
        c.expect(base64.b64encode(b"\xff") + b"\r\n")
        c.expect_end()
    finally:
        c.close()


# Outputs over the inline limit that test the joins between chunks: characters of 2 to 4
# bytes, the characters CSV quotes, no newline at the end, trailing blank lines, bytes
# that are not UTF-8 (far into the file), and a text CSV need not quote.
_OUTPUTS = [
    ("é€😀,\"x\"\n\r" * 12000).encode(),
    ("é€😀 ok " * 12000).encode(),
    b"line\n" * 20000 + b"\n\n\n",
    ("é" * 50000).encode() + b"\xc3",
    os.urandom(100_000),
]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_streamed_records_are_the_whole_records(tmp_path, monkeypatch, chunk):
    db = str(tmp_path / "s.db")
    sink = StoreSink(db)
    sink.run_started(template="cmd {}", inputs=["x"])
    for i, data in enumerate(_OUTPUTS):
        sink.task_done(i + 1, (f"in{i}",), f"cmd in{i}", 1,
                       make_result(stdout=data, stderr=_OUTPUTS[-1 - i]))
    sink.task_done(len(_OUTPUTS) + 1, ("small",), "cmd small", 1,
                   make_result(stdout=b"s\n", stderr=b"\xff"))
    sink.run_ended("completed")
    assert len(os.listdir(db + ".out")) == 2 * len(_OUTPUTS)

    with StoreReader(db) as rd:
        whole = list(rd.attempts())  # every output read into memory
        want_show = {a["seq"]: show_text(rd, a["seq"]) for a in whole}
    # what the export was when each record was written whole
    want_jsonl = b"".join(json.dumps(_views._jsonable(a), ensure_ascii=False).encode(
        "utf-8", "surrogateescape") + b"\n" for a in whole)
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(_views.EXPORT_FIELDS + ("stdout_base64", "stderr_base64"))
    for a in whole:
        w.writerow(_views._csv_cells(_views._jsonable(a)))
    want_csv = text.getvalue().encode("utf-8", "surrogateescape")
    for a in whole:
        assert a["stdout"] == (_OUTPUTS + [b"s\n"])[a["seq"] - 1]

    monkeypatch.setattr(_read, "OUTPUT_CHUNK", chunk)
    with StoreReader(db) as rd:
        for fmt, want in (("jsonl", want_jsonl), ("csv", want_csv)):
            got = io.BytesIO()
            assert export(rd, fmt, got) == len(whole)
            assert got.getvalue() == want, fmt
        for seq, want in want_show.items():
            assert show_text(rd, seq) == want, seq
    # an output's own newlines are kept, then one line break; the show's end is trimmed
    # to one newline (as it always was)
    assert "line\nline" + "\n" * 5 + "  --- stderr" in want_show[3]
    assert want_show[3].endswith("line\nline\n")
