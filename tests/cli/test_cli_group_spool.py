"""--group output waits in temporary files, not in memory; --max-output cuts say so."""

import os
import subprocess

from pardo_cli import pardo_cmd, peak_rss_of


def test_six_flooding_tasks_keep_memory_bounded():
    # 6 x 96 MiB of output; held in memory this took pardo past 1 GiB of RSS
    each = 96 << 20
    rc, rss = peak_rss_of(pardo_cmd() + ["-j6", f"head -c {each} /dev/zero; : {{}}", ":::",
                                          *"123456"])
    assert rc == 0
    assert rss < 200 << 20, f"peak RSS {rss >> 20} MiB"


def test_output_arrives_whole_and_grouped():
    p = subprocess.run(pardo_cmd() + ["-k", "--tag",
                                      "head -c 3000000 /dev/zero | tr '\\0' {}; echo; echo e{} >&2",
                                      ":::", "a", "b"], capture_output=True, timeout=120)
    assert p.returncode == 0
    assert p.stdout == b"a\t" + b"a" * 3000000 + b"\n" + b"b\t" + b"b" * 3000000 + b"\n"
    assert p.stderr == b"a\tea\nb\teb\n"


def test_max_output_cut_is_said_and_counts_as_a_failure():
    p = subprocess.run(pardo_cmd() + ["--max-output", "1K", "-k",
                                      "head -c {} /dev/zero | tr '\\0' x", ":::", "5000", "10"],
                       capture_output=True, timeout=60)
    assert p.returncode == 1
    assert p.stdout == b"x" * 1024 + b"x" * 10
    assert b"pardo: task 1: stdout (4.883K) cut at --max-output 1K; the task counts as failed\n" \
        == p.stderr


def test_max_output_cut_into_a_files_file_counts_as_a_failure(tmp_path):
    # --files: stdout goes to a file, cut there as it would be on our stdout; the task is
    # no success either (it exited 0 before)
    p = subprocess.run(pardo_cmd() + ["--files", "--tmpdir", str(tmp_path), "--max-output",
                                      "1K", "-k", "head -c {} /dev/zero | tr '\\0' x",
                                      ":::", "5000", "10"],
                       capture_output=True, timeout=60)
    assert p.returncode == 1
    names = p.stdout.decode().splitlines()
    assert [os.path.dirname(n) for n in names] == [str(tmp_path)] * 2
    assert [open(n, "rb").read() for n in names] == [b"x" * 1024, b"x" * 10]
    assert p.stderr == (b"pardo: task 1: stdout (4.883K) cut at --max-output 1K; the task "
                        b"counts as failed\n")


def test_results_dir_gets_big_outputs_whole(tmp_path):
    p = subprocess.run(pardo_cmd() + ["--results", str(tmp_path), "head -c {} /dev/zero",
                                      ":::", "200000"], capture_output=True, timeout=60)
    assert p.returncode == 0
    assert (tmp_path / "1" / "200000" / "stdout").stat().st_size == 200000


