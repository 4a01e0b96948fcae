"""pardo.map_commands and the scheduler under it: order, streaming, retries, halt,
deadlines, pinning, delay, and cleanup when the consumer stops early."""

import itertools
import os
import random
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pardo
from pardo._batch.options import HaltPolicy, RunningMedian, parse_jobs, parse_timeout
from pardo._errors import BatchError


def test_results_carry_job_data():
    out = list(pardo.map_commands("echo {}", ["a", "b c"], keep_order=True))
    assert [r.stdout for r in out] == [b"a\n", b"b c\n"]
    assert [r.seq for r in out] == [1, 2]
    assert [r.inputs for r in out] == [("a",), ("b c",)]
    assert all(r.status == "ok" and r.attempts == 1 for r in out)


def test_tuples_bytes_and_paths_as_inputs(tmp_path):
    out = list(pardo.map_commands(["printf", "%s-%s.", "{2}", "{1}"],
                                  [("a", b"\xff"), (tmp_path, 3)], keep_order=True))
    assert out[0].stdout == b"\xff-a."
    assert out[1].stdout == b"3-" + os.fsencode(tmp_path) + b"."


def test_keep_order_under_random_durations():
    rnd = random.Random(7)
    vals = [f"{rnd.random() * 0.05:.3f}" for _ in range(30)]
    out = list(pardo.map_commands("sleep {}; echo {#}", vals, jobs=6, keep_order=True))
    assert [r.stdout for r in out] == [f"{i}\n".encode() for i in range(1, 31)]


def test_completion_order_by_default():
    out = list(pardo.map_commands("sleep {}", ["1", "0"], jobs=2))
    assert [r.inputs[0] for r in out] == ["0", "1"]


def test_inputs_are_pulled_lazily():
    pulled = []

    def gen():
        for i in itertools.count():
            pulled.append(i)
            yield i

    from pardo._batch.scheduler import AHEAD_PER_SLOT

    it = pardo.map_commands("true", gen(), jobs=2)
    first = next(it)
    assert first.status == "ok"
    # what two slots hand to the engine ahead of time, plus one being read
    assert len(pulled) <= 2 * AHEAD_PER_SLOT + 1
    it.close()


def test_closing_early_kills_running_tasks():
    # Durations unique to this test process, so that another user's `sleep 30` on a shared
    # machine is not mistaken for a survivor: sleep 30.0<pid>, sleep 31.0<pid>.
    mark = f".0{os.getpid()}"
    it = pardo.map_commands("{}", ["true", f"sleep 30{mark}", f"sleep 31{mark}"], jobs=3)
    r = next(it)
    assert r.inputs == ("true",)
    t0 = time.monotonic()
    it.close()
    assert time.monotonic() - t0 < 5
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ")
                    assert f"sleep 30{mark}".encode() not in cmd
                    assert f"sleep 31{mark}".encode() not in cmd
            except OSError:
                pass


def _batch(command, inputs, **kw):
    from pardo._batch import Batch, Template

    return Batch(Template([command]), ((v,) for v in inputs), **kw)


def test_tasks_handed_over_ahead_run_at_most_jobs_wide_in_jobs_slots():
    vals = [f"0.0{i % 5}" for i in range(40)]
    batch = _batch("sleep {}", vals, jobs=3, keep_order=True)
    assert batch._max_in_flight > 3  # this run exercises the hand-over ahead of time
    out = list(batch)
    assert [r.seq for r in out] == list(range(1, 41))
    assert {r.slot for r in out} == {1, 2, 3}
    for r in out:  # never more than 3 at once (1 ms of slack for the two clocks)
        at_start = [o for o in out
                    if o.started_at + 0.001 < r.started_at < o.started_at + o.duration - 0.001]
        assert len(at_start) < 3, (r.seq, [o.seq for o in at_start])


@pytest.mark.parametrize("keep_order", [False, True])
def test_stop_reports_no_task_that_never_started(keep_order):
    batch = _batch("{}", ["sleep 10", "true", "true"], jobs=1, keep_order=keep_order)
    assert batch._max_in_flight > 1  # the two trues wait inside the engine
    timer = threading.Timer(0.3, batch.stop)
    timer.start()
    try:
        t0 = time.monotonic()
        out = list(batch)
        assert time.monotonic() - t0 < 5
    finally:
        timer.cancel()
    assert [(r.seq, r.status.value) for r in out] == [(1, "cancelled")]
    assert out[0].pid is not None  # it ran, and was killed
    assert (batch.finished, batch.failed, batch.by_status) == (1, 1, {"cancelled": 1})


def test_stop_reports_the_last_attempt_of_a_retry_that_never_started():
    # "exit 3" fails, the engine starts "sleep 10" in its slot, the retry waits behind it
    batch = _batch("{}", ["exit 3", "sleep 10"], jobs=1, retries=2)
    timer = threading.Timer(0.5, batch.stop)
    timer.start()
    try:
        out = sorted(batch, key=lambda r: r.seq)
    finally:
        timer.cancel()
    assert [(r.seq, r.status.value, r.attempts) for r in out] == [(1, "failed", 1),
                                                                  (2, "cancelled", 1)]
    assert out[0].returncode == 3 and out[0].slot == 1


def test_retries_count_attempts(tmp_path):
    n = tmp_path / "n"
    cmd = f"echo x >> {n}; test $(wc -l < {n}) -ge 3 #{{}}"
    [r] = pardo.map_commands(cmd, ["a"], retries=5)
    assert r.status == "ok" and r.attempts == 3
    [r] = pardo.map_commands("exit 2 #{}", ["a"], retries=2)
    assert r.status == "failed" and r.returncode == 2 and r.attempts == 2


def test_deadline_in_seconds():
    [r] = pardo.map_commands("sleep {}", ["30"], timeout=0.3)
    assert r.status == "timeout" and r.duration < 5


def test_deadline_percent_of_median():
    vals = ["0.1"] * 5 + ["30"]
    out = list(pardo.map_commands("sleep {}", vals, jobs=1, timeout="1000%"))
    assert [r.status for r in out] == ["ok"] * 5 + ["timeout"]
    assert out[-1].duration < 5


def test_halt_now_on_first_failure_cancels_the_rest():
    out = list(pardo.map_commands("{}", ["sleep 30", "exit 3", "echo never"], jobs=2,
                                  halt="now,fail=1"))
    statuses = sorted(r.status.value for r in out)
    assert statuses == ["cancelled", "failed"]


def test_halt_soon_on_success():
    out = list(pardo.map_commands("exit {}", ["1", "0", "2", "3"], jobs=1, halt="soon,success=1"))
    assert [r.inputs[0] for r in out] == ["1", "0"]


def test_pin_gives_each_slot_its_own_cpu():
    cpus = sorted(os.sched_getaffinity(0))
    out = list(pardo.map_commands("sleep 0.2; grep Cpus_allowed_list /proc/self/status #{}",
                                  range(len(cpus)), jobs=len(cpus), pin=True))
    got = sorted(r.stdout.split()[-1].decode() for r in out)
    assert got == [str(c) for c in cpus]
    assert sorted(r.slot for r in out) == list(range(1, len(cpus) + 1))


def test_delay_spaces_starts():
    out = list(pardo.map_commands("true", range(4), jobs=4, delay=0.2, keep_order=True))
    starts = [r.started_at for r in out]
    assert all(b - a >= 0.15 for a, b in zip(starts, starts[1:])), starts


def test_nice_applies_to_tasks():
    [r] = pardo.map_commands("nice #{}", ["x"], nice=7)
    assert r.stdout == b"7\n"


def test_max_args_and_colsep():
    out = list(pardo.map_commands("echo", ["a,b", "c,d", "e"], max_args=2, colsep=",",
                                  keep_order=True))
    assert [r.stdout for r in out] == [b"a b c d\n", b"e\n"]


def test_missing_program_is_an_error_result():
    [r] = pardo.map_commands(["no-such-program-pardo", "{}"], ["x"])
    assert r.status == "error" and "no-such-program-pardo" in r.error


@pytest.mark.parametrize("spec,n", [(None, 4), ("2", 2), ("50%", 2), ("+1", 5), ("-1", 3),
                                    ("-9", 1), ("0", 1024)])
def test_parse_jobs(spec, n):
    assert parse_jobs(spec, 4) == n


def test_parse_timeout_and_halt_errors():
    assert parse_timeout("1.5") == (1.5, None)
    assert parse_timeout("200%") == (None, 2.0)
    assert parse_timeout(0) == (None, None)
    with pytest.raises(BatchError):
        parse_timeout("x")
    assert HaltPolicy.parse("now,fail=1") == HaltPolicy("now", "fail", 1, None)
    assert HaltPolicy.parse("soon,success=30%") == HaltPolicy("soon", "success", None, 0.3)
    assert HaltPolicy.parse("2") == HaltPolicy("now", "fail", 1, None)
    assert HaltPolicy.parse("never") is None
    with pytest.raises(BatchError):
        HaltPolicy.parse("later,fail=1")


def test_running_median():
    m = RunningMedian()
    rnd = random.Random(3)
    xs = []
    for _ in range(101):
        x = rnd.random()
        xs.append(x)
        m.add(x)
        s = sorted(xs)
        k = len(s)
        assert m.value() == (s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2)


# No lone surrogates in text: only the ones surrogateescape makes from undecodable bytes
# (the binary values) stand for bytes; others cannot be encoded at all.
hostile = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                  max_size=20) | st.binary(
    max_size=12).map(lambda b: b.replace(b"\0", b""))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(hostile, min_size=1, max_size=6))
def test_hostile_values_arrive_byte_exact_exec_and_shell(values):
    expected = [(v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")) + b"."
                for v in values]
    for template in ("/usr/bin/printf %s. {}", "printf %s. {}"):  # direct exec, then sh -c
        out = list(pardo.map_commands(template, values, keep_order=True))
        assert [r.stdout for r in out] == expected, template


def test_halt_percent_counts_against_the_total_when_known():
    out = list(pardo.map_commands("exit {}", ["1", "0", "0", "0"], jobs=1, halt="soon,fail=50%"))
    assert len(out) == 4  # 1 failure of 4 is 25%
    out = list(pardo.map_commands("exit {}", ["1", "1", "0", "0"], jobs=1, halt="soon,fail=50%"))
    assert len(out) == 2
