"""The public surface is exactly what __all__ says, and every name in it resolves."""

import inspect

import pardo

EXPECTED = {
    "BrokenPool", "DEVNULL", "INHERIT", "STDOUT", "IsolationUnavailable", "PardoError", "Pool", "Result",
    "ResultQueue", "Status", "StoreError", "StoreMismatch", "Task", "TaskCrashed", "TaskError", "TaskTimeout", "configure",
    "isolation", "map_commands", "progress", "releases_gil", "run", "run_async", "spawn",
}


def test_all_is_pinned():
    assert set(pardo.__all__) == EXPECTED


def test_every_public_name_resolves():
    for name in pardo.__all__:
        assert getattr(pardo, name) is not None, name


def test_unknown_attribute_is_an_attribute_error():
    try:
        pardo.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_status_compares_equal_to_strings():
    for value in ("ok", "failed", "timeout", "signaled", "error", "cancelled", "crashed"):
        assert pardo.Status(value) == value
        assert str(pardo.Status(value)) == value


def test_run_signature_is_the_contract():
    params = inspect.signature(pardo.run).parameters
    assert list(params)[0] == "args"
    for kw in ("timeout", "kill_grace", "cwd", "env", "input", "shell", "max_output", "stdout",
               "stderr", "cpus", "nice", "memory_limit"):
        assert params[kw].kind is inspect.Parameter.KEYWORD_ONLY, kw
    assert params["timeout"].default is None
    assert params["kill_grace"].default == 2.0


def test_exceptions_subclass_what_users_catch():
    assert issubclass(pardo.TaskTimeout, TimeoutError)
    assert issubclass(pardo.IsolationUnavailable, OSError)
    for cls in (pardo.TaskError, pardo.TaskTimeout, pardo.TaskCrashed, pardo.IsolationUnavailable):
        assert issubclass(cls, pardo.PardoError)


def test_pool_is_an_executor():
    import concurrent.futures
    import concurrent.futures.process

    assert issubclass(pardo.Pool, concurrent.futures.Executor)
    assert issubclass(pardo.BrokenPool, concurrent.futures.process.BrokenProcessPool)


def test_cli_stops_quietly_when_stdout_closes():
    import os
    import subprocess
    import sys

    for buffered in (True, False):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        if not buffered:
            env["PYTHONUNBUFFERED"] = "1"
        r, w = os.pipe()
        os.close(r)  # nobody will read: the first write fails with EPIPE
        try:
            p = subprocess.run([sys.executable, "-m", "pardo", "doctor"], stdout=w, env=env,
                               stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(w)
        assert p.returncode == 141, (buffered, p.stderr)
        assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, buffered
