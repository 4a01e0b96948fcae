"""Task output in the store of ``pardo run --store``: taken from --group's spool files
(memory stays bounded whatever tasks print, and big streams land whole beside the store),
and counted in the joblog export's Receive column as --joblog counts it."""

from __future__ import annotations

import os
import subprocess
import sys

from pardo._store import StoreReader

from pardo_cli import pardo_cmd, peak_rss_of


def _raw_rows(db):
    """seq -> (stdout, stderr, stdout_file, stderr_file, truncated) as stored."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT seq, stdout, stderr, stdout_file, stderr_file, truncated FROM attempts"
            " WHERE final = 1")}
    finally:
        con.close()


def _same_as_yes(path, word, size):
    """Whether the file holds exactly the first *size* bytes of ``yes word``, read a
    chunk at a time."""
    line = word + b"\n"
    chunk = line * ((1 << 20) // len(line))  # a whole number of lines
    with open(path, "rb") as f:
        left = size
        while left:
            data = f.read(min(len(chunk), left))
            if data != chunk[:len(data)] or not data:
                return False
            left -= len(data)
        return f.read(1) == b""


def test_flooding_tasks_with_a_store_keep_memory_bounded_and_output_whole(tmp_path):
    # 4 tasks x 160 MiB on stdout. Held in memory until recorded, this took pardo's RSS to
    # several times the output of the tasks running at once (or cut it at 16 MiB).
    db = str(tmp_path / "s.db")
    each = 160 << 20
    rc, rss = peak_rss_of(pardo_cmd() + ["--store", db, "-j4",
                                          f"yes {{}} | head -c {each}; echo e{{}} >&2",
                                          ":::", "a", "bb", "ccc", "d"])
    assert rc == 0
    assert rss < 200 << 20, f"peak RSS {rss >> 20} MiB"
    rows = _raw_rows(db)
    assert sorted(rows) == [1, 2, 3, 4]
    out = db + ".out"
    for seq, word in ((1, b"a"), (2, b"bb"), (3, b"ccc"), (4, b"d")):
        stdout, stderr, stdout_file, stderr_file, truncated = rows[seq]
        assert stdout is None and stderr_file is None and truncated is None
        assert stderr == b"e" + word + b"\n"
        assert _same_as_yes(os.path.join(out, stdout_file), word, each), seq
    # nothing else was left beside the store (the spool files are unnamed)
    assert sorted(os.listdir(out)) == sorted(rows[s][2] for s in rows)


def test_spooled_output_is_recorded_inline_up_to_the_limit_and_in_files_beyond(tmp_path):
    db, log = str(tmp_path / "s.db"), str(tmp_path / "log.tsv")
    limit = 64 * 1024
    sizes = [0, 10, limit, limit + 1, 3 * limit]
    # stdout and stderr of different sizes, and a task that fails once with big output
    # (the attempt that is not final is recorded from its spool file too)
    cmd = ("head -c {} /dev/zero | tr '\\0' o; head -c $(({} / 2 + 1)) /dev/zero | tr '\\0' e >&2;"
           " [ {} != BIG ] || [ -e {}.again ] || { touch {}.again; exit 3; }"
           ).replace("BIG", str(3 * limit))
    p = subprocess.run(pardo_cmd() + ["--store", db, "--joblog", log, "--retries", "2",
                                      "-k", cmd, ":::", *map(str, sizes)],
                       capture_output=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"".join(b"o" * n for n in sizes)  # a failed attempt's is not shown
    with StoreReader(db) as rd:
        attempts = list(rd.attempts())
    assert [(a["seq"], a["attempt"]) for a in attempts] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (5, 2)]
    for a in attempts:
        n = sizes[a["seq"] - 1]
        assert a["stdout"] == b"o" * n and a["stderr"] == b"e" * (n // 2 + 1), a["seq"]
    rows = _raw_rows(db)
    assert [rows[s][2] is not None for s in range(1, 6)] == [False, False, False, True, True]
    assert [rows[s][3] is not None for s in range(1, 6)] == [False, False, False, False, True]
    assert sorted(os.listdir(db + ".out")) == [
        "1-4-1.stdout", "1-5-1.stderr", "1-5-1.stdout", "1-5-2.stderr", "1-5-2.stdout"]


def _rows(joblog_text):
    """The header, and each row split into its columns, by Seq."""
    lines = joblog_text.splitlines()
    return lines[0], {int(ln.split("\t")[0]): ln.split("\t") for ln in lines[1:]}


def test_joblog_export_has_the_receive_column_of_the_runs_joblog(tmp_path):
    db, log = str(tmp_path / "s.db"), str(tmp_path / "log.tsv")
    p = subprocess.run(pardo_cmd() + ["--store", db, "--joblog", log, "head -c {} /dev/zero",
                                      ":::", "0", "7", "65536", "65537", "1000000"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    exported = subprocess.run([sys.executable, "-m", "pardo", "export", db, "--format",
                               "joblog"], capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    with open(log) as f:
        written = f.read()
    got, want = _rows(exported.stdout), _rows(written)
    assert got == want  # byte for byte, row by row (the joblog is in order of completion)
    assert [got[1][s][5] for s in sorted(got[1])] == ["0", "7", "65536", "65537", "1000000"]


def test_output_spooled_on_another_filesystem_is_copied_whole(tmp_path):
    # $TMPDIR on a tmpfs, the store on the test's disk: no hard link can cross, so the
    # store copies the big streams (in the kernel), and they arrive whole
    from storehelp import small_tmpfs

    db = str(tmp_path / "s.db")
    with small_tmpfs("64m") as tmpdir:
        p = subprocess.run(pardo_cmd() + ["--store", db, "-j2", "yes {} | head -c 3000000",
                                          ":::", "x", "yy", "zzz"],
                           capture_output=True, timeout=60,
                           env=dict(os.environ, TMPDIR=tmpdir))
        assert os.listdir(tmpdir) == []  # unnamed files only, gone with the run
    assert p.returncode == 0, p.stderr
    rows = _raw_rows(db)
    for seq, word in ((1, b"x"), (2, b"yy"), (3, b"zzz")):
        assert _same_as_yes(os.path.join(db + ".out", rows[seq][2]), word, 3000000), seq


def test_a_disk_that_fills_up_leaves_no_output_file_that_no_row_names():
    # The store on a 2 MiB filesystem, each task printing 0.5 MB: the fourth output file
    # does not fit. The run stops (255); the files of the rows that committed are whole,
    # and no partly written or unrecorded file is left behind.
    from storehelp import small_tmpfs

    with small_tmpfs("2m") as d:
        db = os.path.join(d, "s.db")
        p = subprocess.run(pardo_cmd() + ["--store", db, "-j1",
                                          "head -c 500000 /dev/zero; echo {}", ":::",
                                          *map(str, range(1, 9))],
                           capture_output=True, timeout=60)
        assert p.returncode == 255 and b"the disk is full" in p.stderr
        rows = _raw_rows(db)
        assert 0 < len(rows) < 8
        names = {r[2] for r in rows.values()}
        assert sorted(os.listdir(db + ".out")) == sorted(names)
        for name in names:
            assert os.path.getsize(os.path.join(db + ".out", name)) == 500002
