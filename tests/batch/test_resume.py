"""The batch runner picks up from a joblog itself (``resume=``), writes a row per result
once the consumer has it, and dry-runs what it would run."""

import pytest

from pardo._batch import Batch, Template
from pardo._errors import BatchError
from pardo._store.joblog import read_joblog


def _batch(command, values, **kw):
    return Batch(Template([command]), [(v,) for v in values], keep_order=True, jobs=2, **kw)


def test_joblog_rows_then_resume_and_resume_failed(tmp_path):
    log = str(tmp_path / "log")
    out = list(_batch("exit {}", ["0", "3", "0"], joblog=log))
    assert [r.returncode for r in out] == [0, 3, 0]
    rows = read_joblog(log)
    assert sorted(rows) == [1, 2, 3] and not rows[2].ok and rows[2].command == "exit 3"
    # --resume: everything logged is done; a fourth input is new
    out = list(_batch("exit {}", ["0", "3", "0", "0"], joblog=log, resume="resume"))
    assert [r.seq for r in out] == [4]
    # --resume-failed: what failed runs again (the same input), with its old number
    out = list(_batch("exit {}", ["0", "0", "0", "0"], joblog=log, resume="resume-failed"))
    assert [(r.seq, r.returncode) for r in out] == [(2, 0)]
    assert read_joblog(log)[2].ok


def test_retry_failed_runs_the_logged_commands_and_ignores_inputs(tmp_path):
    log = str(tmp_path / "log")
    list(_batch("echo {}; exit {}", ["1", "0", "2"], joblog=log))
    batch = _batch("not used {}", [], joblog=log, resume="retry-failed")
    assert list(batch.dry_run()) == ["echo 1; exit 1", "echo 2; exit 2"]
    batch = _batch("not used {}", [], joblog=log, resume="retry-failed")
    out = list(batch)
    assert [(r.seq, r.stdout) for r in out] == [(1, b"1\n"), (3, b"2\n")]


def test_resuming_needs_a_joblog_and_a_known_mode(tmp_path):
    with pytest.raises(BatchError, match="needs a joblog"):
        _batch("true", ["a"], resume="resume")
    with pytest.raises(BatchError, match="resume must be one of"):
        _batch("true", ["a"], joblog=str(tmp_path / "log"), resume="again")


def test_a_row_is_written_once_the_consumer_is_done_with_its_result(tmp_path):
    # A pardo killed while it shows a result has not logged it: --resume runs it again
    # rather than losing its output.
    log = tmp_path / "log"
    it = iter(_batch("echo {}", ["a", "b"], joblog=str(log)))
    first = next(it)
    assert first.seq == 1 and read_joblog(str(log)) == {}
    second = next(it)
    assert second.seq == 2 and sorted(read_joblog(str(log))) == [1]
    it.close()  # closing after taking a result logs it too
    assert sorted(read_joblog(str(log))) == [1, 2]


def test_dry_run_renders_every_job_and_runs_none(tmp_path):
    marker = tmp_path / "ran"
    batch = _batch("touch " + str(marker) + "; echo {#} {%} {}", ["a", "b c"])
    assert list(batch.dry_run()) == [f"touch {marker}; echo 1 1 a",
                                     f"touch {marker}; echo 2 1 'b c'"]
    assert not marker.exists()


def test_the_job_count_is_kept_only_while_a_resume_skips_nothing(tmp_path):
    # --halt N% counts against the total, which a resume that skips jobs no longer knows.
    log = tmp_path / "log"
    assert _batch("true", ["a"], joblog=str(log), resume="resume", total=3).total == 3
    log.write_text("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"
                   "1\t:\t1.0\t0.1\t0\t0\t1\t0\ttrue a\n")
    assert _batch("true", ["a"], joblog=str(log), resume="resume", total=3).total is None
    assert _batch("true", ["a"], joblog=str(log), resume="resume-failed", total=3).total == 3
    assert _batch("true", [], joblog=str(log), resume="retry-failed", total=3).total is None
    assert _batch("true", ["a"], total=3).total == 3
