"""The named seam between Python and the engine: a Request set once and reused for many
tasks (pardo._run.SpawnOptions builds it), and a Completion read by name."""

import pytest

from pardo import _engine, _supervisor
from pardo._run import DEFAULT_MAX_OUTPUT, ResultQueue, SpawnOptions, spawn


def test_request_defaults_are_spawns_defaults():
    # SpawnOptions sets only what differs from a fresh Request: a default changed on one
    # side alone would silently change what spawn() does.
    r = _engine.Request()
    assert r.timeout_ns == -1
    assert r.kill_grace_ns == int(spawn.__kwdefaults__["kill_grace"] * 1e9)
    assert r.max_output == DEFAULT_MAX_OUTPUT == spawn.__kwdefaults__["max_output"]
    assert r.env is None and r.input is None and r.nice is None
    assert r.cwd == b"" and r.memory_limit == 0 and r.linger is False
    assert r.extra_fds == []
    assert (r.out_mode, r.err_mode) == (_engine.OUT_CAPTURE, _engine.OUT_CAPTURE)


def test_request_fields_round_trip_and_refuse_a_bad_stream_mode():
    r = _engine.Request()
    r.env, r.input, r.nice, r.cwd = [b"A=1"], b"data", 5, b"/tmp"
    assert (r.env, r.input, r.nice, r.cwd) == ([b"A=1"], b"data", 5, b"/tmp")
    r.env, r.input, r.nice = None, None, None
    assert (r.env, r.input, r.nice) == (None, None, None)
    with pytest.raises(ValueError, match="stream mode"):
        r.out_mode = 99


def test_one_options_object_serves_many_tasks(tmp_path):
    options = SpawnOptions(timeout=30, cwd=tmp_path, env={"SEAM": "yes"}, input=b"fed\n")
    q = ResultQueue(max_running=2)
    argv = [b"/bin/sh", b"-c", b'read line; echo "$line $SEAM $PWD $0"']
    tasks = [options.submit(["t", i], argv + [str(i).encode()], q, tag=i) for i in range(5)]
    got = {}
    while len(q):
        for t in q.get_many(timeout=30):
            got[t.tag] = t.result
    assert sorted(got) == list(range(5))
    for i, r in got.items():
        assert r.status == "ok", r
        assert r.stdout == f"fed yes {tmp_path} {i}\n".encode()
        assert r.deadline == 30 and r.args == ["t", i]
    assert all(t.done() for t in tasks)


def test_completion_is_read_by_name():
    sup = _supervisor.get()
    r = _engine.Request()
    h = sup.submit(r, [b"/bin/sh", b"-c", b"printf out; printf err >&2; exit 3"], [], None)
    assert sup.wait_done(h, 30 * 10**9)
    c = h.result
    assert (c.exited, c.exit_code, c.term_signal, c.spawn_stage) == (True, 3, 0, 0)
    assert (c.out, c.err) == (b"out", b"err")
    assert not (c.timed_out or c.cancelled or c.out_truncated or c.err_truncated)
    assert c.pid > 0 and c.duration_ns > 0 and c.note == ""
    with pytest.raises(AttributeError):
        c.exit_code = 0  # read-only: the engine's record of what happened


def test_spawn_reuses_converted_options_only_for_the_very_same_objects():
    # spawn() in a loop reuses the last conversion of scalar options, by identity: a
    # different value, or an equal one of a refused type, must not ride on it.
    assert spawn([b"/bin/sleep", b"5"], timeout=0.05).wait(30).status == "timeout"
    r = spawn([b"/bin/sleep", b"0.2"], timeout=30).wait(30)
    assert r.status == "ok" and r.deadline == 30
    assert spawn(["/bin/true"], timeout=1).wait(30).status == "ok"
    with pytest.raises(TypeError, match="timeout"):
        spawn(["/bin/true"], timeout=True)
    with pytest.raises(TypeError, match="kill_grace"):
        spawn(["/bin/true"], timeout=1, kill_grace="2")
