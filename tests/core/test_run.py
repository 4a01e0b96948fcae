"""run(), spawn(), Task, ResultQueue and run_async as a caller sees them: bad input is a
clear error, exit statuses are exact, streams, input, placement and limits do what they say.

Every test here checks that it leaves no fd, live child or zombie child behind in the
test process (conftest.py's leak check, on for every test).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

import pardo

# tests/zoo is on sys.path (conftest.py puts it there)
import audit

# --- bad input: each a clear error --------------------------------------------------


def test_missing_program():
    r = pardo.run(["pzoo-no-such-program-x"])
    assert r.status == "error" and r.returncode is None
    assert "pzoo-no-such-program-x" in r.error and "No such file" in r.error, r.error


def test_directory_as_program(tmp_path):
    r = pardo.run([str(tmp_path)])
    assert r.status == "error"
    assert str(tmp_path) in r.error and "Permission denied" in r.error, r.error


def test_non_executable_file(tmp_path):
    f = tmp_path / "script.sh"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(0o644)
    r = pardo.run([str(f)])
    assert r.status == "error"
    assert str(f) in r.error and "Permission denied" in r.error, r.error


def test_bad_cwd(tmp_path):
    bad = tmp_path / "no" / "such" / "dir"
    r = pardo.run(["/bin/true"], cwd=str(bad))
    assert r.status == "error"
    assert str(bad) in r.error and "No such file" in r.error, r.error


def test_cwd_is_a_file(tmp_path):
    f = tmp_path / "plain"
    f.write_text("")
    r = pardo.run(["/bin/true"], cwd=f)
    assert r.status == "error"
    assert str(f) in r.error and "Not a directory" in r.error, r.error


@pytest.mark.parametrize("env", [{"A": 1}, {"A": None}, {1: "x"}, {"A": ["x"]}])
def test_env_with_non_string_values(env):
    with pytest.raises(TypeError):
        pardo.run(["/bin/true"], env=env)


@pytest.mark.parametrize("timeout", [-1, -0.001])
def test_negative_timeout(timeout):
    with pytest.raises(ValueError):
        pardo.run(["/bin/true"], timeout=timeout)


def test_huge_argv():
    r = pardo.run(["/bin/true"] + ["x" * 1000] * 3000)  # 3 MB > ARG_MAX (2 MiB here)
    assert r.status == "error"
    assert "Argument list too long" in r.error and "/bin/true" in r.error, r.error


@pytest.mark.parametrize("args", [[], ["/bin/echo", "a\0b"]])
def test_bad_argv_values(args):
    with pytest.raises(ValueError):
        pardo.run(args)


def test_bad_memory_limit():
    with pytest.raises(ValueError):
        pardo.run(["/bin/true"], memory_limit="plenty")


# --- exit status reported exactly ---------------------------------------------------


def test_foreign_sigkill_is_signaled_not_timeout():
    r = pardo.run(["sh", "-c", "kill -9 $$"], timeout=10)
    assert (r.status, r.signal, r.returncode) == ("signaled", 9, None), r


@pytest.mark.parametrize("code", [1, 2, 127, 255])
def test_exit_codes(code):
    r = pardo.run(["sh", "-c", f"exit {code}"])
    assert (r.status, r.returncode, r.signal) == ("failed", code, None)


# --- spawn, Task, ResultQueue, run_async ----------------------------------------------


def test_spawn_returns_at_once_and_wait_gives_the_result():
    t0 = time.monotonic()
    t = pardo.spawn(["sleep", "0.5"], tag="nap")
    assert time.monotonic() - t0 < 0.2
    assert not t.done() and t.result is None and t.tag == "nap"
    assert t.pid > 0 and os.path.exists(f"/proc/{t.pid}")
    r = t.wait()
    assert t.done() and t.result is r
    assert r.status == "ok" and r.pid == t.pid and r.duration >= 0.5
    assert abs(r.started_at - time.time()) < 5


def test_wait_timeout_raises_and_task_goes_on_then_kill(zoo):
    token = zoo.token()
    t = pardo.spawn(zoo.argv("tree", token), env=zoo.env(token))
    with pytest.raises(TimeoutError):
        t.wait(timeout=0.2)
    assert not t.done()
    t0 = time.monotonic()
    t.kill()
    r = t.wait(timeout=5)
    assert r.status == "cancelled" and time.monotonic() - t0 < 1.0
    assert audit.survivors(token) == []


def test_terminate_waits_kill_grace_for_a_term_ignorer(zoo):
    token = zoo.token()
    t = pardo.spawn(zoo.argv("termignore", token), env=zoo.env(token), kill_grace=0.4)
    audit.wait_for_token_processes(token, 5)
    t0 = time.monotonic()
    t.terminate()
    r = t.wait(timeout=5)
    took = time.monotonic() - t0
    assert r.status == "cancelled"
    assert 0.35 <= took < 1.4, f"SIGKILL came {took:.3f} s after terminate(), grace 0.4 s"
    assert audit.survivors(token) == []


def test_terminate_lets_a_graceful_task_finish_early(zoo):
    token = zoo.token()
    t = pardo.spawn(zoo.argv("graceful", token), env=zoo.env(token), kill_grace=10)
    audit.wait_for_token_processes(token, 1)
    t0 = time.monotonic()
    t.terminate()
    r = t.wait(timeout=15)
    assert r.status == "cancelled" and b"got TERM" in r.stdout
    assert time.monotonic() - t0 < 1.0


def test_kill_after_finish_changes_nothing():
    t = pardo.spawn(["/bin/true"])
    r = t.wait()
    t.kill()
    t.terminate()
    assert t.wait() is r and r.status == "ok"


def test_many_in_flight_exact_returncodes():
    tasks = [pardo.spawn(["sh", "-c", f"exit {i % 5}"], tag=i) for i in range(100)]
    for t in tasks:
        r = t.wait(timeout=60)
        assert r.returncode == t.tag % 5, (t.tag, r)


def test_result_queue_delivers_every_task():
    q = pardo.ResultQueue()
    tasks = [pardo.spawn(["sleep", f"0.{i % 3}"], queue=q, tag=i) for i in range(20)]
    assert 0 < len(q) <= 20
    got = []
    while len(got) < 20:
        got += q.get_many(max_items=7, timeout=10)
    assert sorted(t.tag for t in got) == list(range(20))
    assert all(t.done() and t.result.status == "ok" for t in got)
    assert {id(t) for t in got} == {id(t) for t in tasks}
    assert len(q) == 0
    slow = pardo.spawn(["sleep", "5"], queue=q)
    with pytest.raises(TimeoutError):
        q.get(timeout=0.05)
    assert q.get_many(timeout=0.05) == []
    slow.kill()
    assert q.get(timeout=5) is slow and slow.result.status == "cancelled"
    with pytest.raises(RuntimeError):  # nothing in flight: waiting would never end
        q.get()


def test_dropped_queue_with_undelivered_tasks_frees_its_fd():
    """A ResultQueue dropped while finished tasks still sit in it must not keep its
    descriptor (or the tasks) alive; no_leaks checks the fd."""
    import gc

    q = pardo.ResultQueue()
    t = pardo.spawn(["sh", "-c", "echo done > /dev/null"], queue=q)
    end = time.monotonic() + 10
    while not t.done() and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.1)  # finished by now in any case: it is in the queue, undelivered
    del q, t
    gc.collect()


def test_result_queue_fileno_with_selectors():
    import selectors

    q = pardo.ResultQueue()
    with selectors.DefaultSelector() as sel:
        sel.register(q.fileno(), selectors.EVENT_READ)
        assert sel.select(timeout=0.05) == []
        t = pardo.spawn(["sleep", "0.2"], queue=q)
        assert sel.select(timeout=5), "queue fd never became readable"
        assert q.get(timeout=0) is t and t.result.ok


def test_run_async_many_without_a_thread_per_task():
    import asyncio

    async def main():
        before = threading.active_count()
        coros = [pardo.run_async(["sleep", "0.3"]) for _ in range(20)]
        task = asyncio.gather(*coros)
        await asyncio.sleep(0.1)
        during = threading.active_count()
        return before, during, await task

    t0 = time.monotonic()
    before, during, results = asyncio.run(main())
    assert all(r.status == "ok" for r in results)
    assert time.monotonic() - t0 < 2.0
    assert during - before <= 2, f"{during - before} threads for 20 tasks"


def test_run_async_timeout_is_a_result():
    import asyncio

    r = asyncio.run(pardo.run_async(["sleep", "30"], timeout=0.2))
    assert r.status == "timeout" and r.duration < 1.5


def test_run_async_cancelled_kills_the_tree(zoo):
    """An awaiting coroutine that is cancelled must not leave its task running."""
    import asyncio

    token = zoo.token()

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            task = pardo.run_async(zoo.argv("tree", token), env=zoo.env(token))
            await asyncio.wait_for(task, 0.3)

    asyncio.run(main())
    assert audit.survivors(token, settle=2.0) == []


# --- streams, input, placement, limits ------------------------------------------------


def test_stdout_to_path_and_file_object(tmp_path):
    path = tmp_path / "out.txt"
    r = pardo.run(["sh", "-c", "echo to-path; echo err >&2"], stdout=str(path))
    assert r.ok and r.stdout == b"" and r.stderr == b"err\n"
    assert path.read_bytes() == b"to-path\n"
    with open(tmp_path / "obj.txt", "wb") as f:
        r = pardo.run(["echo", "to-object"], stdout=f)
    assert r.ok and (tmp_path / "obj.txt").read_bytes() == b"to-object\n"


def test_stderr_merged_and_devnull():
    r = pardo.run(["sh", "-c", "echo a; echo b >&2; echo c"], stderr=pardo.STDOUT)
    assert r.stdout == b"a\nb\nc\n" and r.stderr == b""
    r = pardo.run(["sh", "-c", "echo a; echo b >&2"], stdout=pardo.DEVNULL, stderr=pardo.DEVNULL)
    assert r.ok and r.stdout == b"" and r.stderr == b""


def test_input_bytes_str_and_large():
    assert pardo.run(["cat"], input=b"\x00\xffab").stdout == b"\x00\xffab"
    assert pardo.run(["cat"], input="héllo").stdout == "héllo".encode()
    big = os.urandom(1 << 20) * 4  # 4 MiB in and out at once: no pipe deadlock
    r = pardo.run(["cat"], input=big, timeout=30)
    assert r.ok and r.stdout == big
    assert pardo.run(["cat"]).stdout == b""  # stdin is /dev/null by default


def test_env_cwd_shell_and_bytes_args(tmp_path):
    assert pardo.run(["/usr/bin/env"], env={"PZ": "1"}).stdout == b"PZ=1\n"
    assert pardo.run(["pwd"], cwd=tmp_path).stdout.decode().strip() == str(tmp_path)
    assert pardo.run("echo $((6*7))", shell=True).stdout == b"42\n"
    assert pardo.run([b"/bin/echo", b"\xff"]).stdout == b"\xff\n"


@pytest.mark.parametrize("cpu", sorted(os.sched_getaffinity(0))[:2])
def test_cpus_pins_the_task(cpu):
    r = pardo.run(["grep", "Cpus_allowed_list", "/proc/self/status"], cpus=[cpu])
    assert r.stdout.split()[-1] == str(cpu).encode(), r.stdout


def test_nice_lowers_priority():
    r = pardo.run(["nice"], nice=5)
    assert int(r.stdout) == min(19, os.nice(0) + 5), r.stdout


def test_memory_limit_stops_a_big_allocation(zoo):
    token = zoo.token()
    big = pardo.run(zoo.argv("alloc", token, 256), env=zoo.env(token), memory_limit="64M")
    assert big.status in ("failed", "signaled"), big
    small = pardo.run(zoo.argv("alloc", token, 8), env=zoo.env(token), memory_limit=64 << 20)
    assert small.ok, small


def test_result_accounts_cpu_and_memory(zoo):
    token = zoo.token()
    r = pardo.run(zoo.argv("alloc", token, 64), env=zoo.env(token))
    assert r.ok and r.max_rss >= 60 << 20, r.max_rss
    r = pardo.run(["sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"], timeout=30)
    assert r.ok and r.cpu_user + r.cpu_sys > 0.05, (r.cpu_user, r.cpu_sys)


def test_linger_waits_for_the_tree_default_kills_it(zoo):
    token = zoo.token()
    r = pardo.run(zoo.argv("lingerer", token), env=zoo.env(token), linger=True, timeout=10)
    assert r.ok and r.stdout == b"leader\nlate\n" and r.duration >= 0.45, r
    token = zoo.token()
    r = pardo.run(zoo.argv("lingerer", token), env=zoo.env(token), timeout=10)
    assert r.ok and r.stdout == b"leader\n" and r.duration < 0.45, r
    assert audit.survivors(token) == []


def test_pass_fds_caller_may_close_its_copy():
    rfd, wfd = os.pipe()
    try:
        t = pardo.spawn(["sh", "-c", "echo via3 >&3"], pass_fds={3: wfd})
        os.close(wfd)
        wfd = -1
        data = b""
        while chunk := os.read(rfd, 100):
            data += chunk
        assert data == b"via3\n"
        assert t.wait(timeout=10).ok
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
