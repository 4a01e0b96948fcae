"""Running one command: :func:`run`, :func:`spawn`, :func:`run_async`, :class:`Task`,
:class:`ResultQueue`.

Everything here converts and checks arguments, then hands a request to the native
supervisor (``pardo._engine``), which spawns, enforces the deadline, kills the tree and
reaps on its own thread. Waiting releases the GIL. The seam, by name on both sides::

    run()/spawn() keywords ─► SpawnOptions ─► _engine.Request   (checked once per call,
    batch runner ─► Spawner ─► SpawnOptions ─┘                   or once per batch)
    Supervisor.submit(request, argv, cpus, queue, executable) ─► Handle
    Handle.result: _engine.Completion ─► _make_result ─► Result
"""

from __future__ import annotations

import math
import os
import re
import weakref
from collections.abc import Iterable, Mapping

from . import _engine, _supervisor
from ._errors import UsageError
from ._result import Result, Status

# Task.watch(buf): the engine reads the first WATCH_BYTES of buf as two native int64 words,
# an absolute CLOCK_MONOTONIC deadline in ns (0: none) and the seq that deadline belongs to
# (reported back as Result.watch_seq when it fires).
WATCH_BYTES = 16
DEFAULT_MAX_OUTPUT = 16 * 2**20


class _Special:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"pardo.{self.name}"


DEVNULL = _Special("DEVNULL")  # discard the stream (stdin is always /dev/null unless input=)
INHERIT = _Special("INHERIT")  # the stream goes where this process's own stream goes
STDOUT = _Special("STDOUT")  # stderr=STDOUT: merge stderr into stdout
# subprocess.DEVNULL and subprocess.STDOUT are accepted too; their values are part of that
# module's interface, and importing it here would only slow every start-up.
_SUBPROCESS_DEVNULL = -3
_SUBPROCESS_STDOUT = -2

# One grammar for every size pardo takes (memory_limit=, max_output=, --memory-limit,
# --max-output): a whole or decimal number, then optionally K, M, G or T (powers of 1024,
# as GNU parallel and ulimit count) and an optional B or iB; case and blanks around the
# parts do not matter. Exponents, signs and other units are refused rather than guessed.
_SIZE_PATTERN = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(value, name: str, *, minimum: int = 1) -> int:
    """Bytes from an int, or from a string such as ``"512M"``, ``"1.5G"`` or ``"64KiB"``.

    Args:
        value: the size as given.
        name: the option it was given for, named in the error message.
        minimum: the smallest size the option allows (0 for "keep nothing").

    Raises:
        UsageError: not a size, or below ``minimum``.
        TypeError: neither an int nor a str.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name} must be a number of bytes or a string like '512M', "
                        f"not {type(value).__name__}")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(_SIZE_PATTERN, value, re.IGNORECASE)
        if m is None:
            raise UsageError(f"{name}: cannot read {value!r} as a size; give bytes, or a "
                             f"number with K, M, G or T (e.g. 512M, 1.5G)")
        size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size < minimum:
        unit = "byte" if minimum == 1 else "bytes"
        raise UsageError(f"{name} must be at least {minimum} {unit}, not {value!r}")
    return size


def _seconds_to_ns(value, name) -> int:
    if value is None:
        return -1
    if (value.__class__ is float or value.__class__ is int) and 0 <= value < math.inf:
        return int(value * 1e9)  # the common case, once per task: no further checks
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise UsageError(f"{name} must be >= 0 seconds, not {value}")
    if math.isinf(value):
        return -1
    return int(value * 1e9)


def _arg_bytes(a, what) -> bytes:
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode("utf-8", "surrogateescape")
    if isinstance(a, os.PathLike):
        return os.fsencode(a)
    raise TypeError(f"{what} must be str, bytes or os.PathLike, not {type(a).__name__}: {a!r}")


# Words that are no program of their own in sh: `exec` would change what they mean.
_SHELL_WORDS = frozenset(b"""! { } [[ ]] if then else elif fi case esac for while until do done
    function select time . : [ alias bg break builtin cd chdir command continue declare echo
    eval exec exit export false fc fg getopts hash jobs kill let local logout printf pwd read
    readonly return set shift source test times trap true type typeset ulimit umask unalias
    unset wait""".split())


def shell_line(line: bytes) -> bytes:
    """*line* for ``sh -c``, with ``exec`` in front when it is one simple command.

    sh (dash at least) forks for the last command of ``-c`` and then reports a signal death
    of that command as exit 128+N: a segfault would read "exited 139". With ``exec`` the
    command takes the shell's place, so its own exit or signal is what pardo sees. Anything
    else (a list, a pipeline, a subshell, a builtin, an assignment, a comment) is left as it
    is.
    """
    quote = 0  # the quote character we are inside, or 0
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if quote:
            if c == quote:
                quote = 0
            elif c == 0x5C and quote == 0x22:  # backslash inside "..."
                i += 1
        elif c in b"'\"":
            quote = c
        elif c == 0x5C:
            i += 1
        elif c in b";|()\n`":
            if not (c == 0x7C and i and line[i - 1] == 0x3E):  # >| is a redirection
                return line
        elif c == 0x26:  # &: a redirection only as >& or <&
            if not (i and line[i - 1] in b"<>"):
                return line
        elif c == 0x23 and (i == 0 or line[i - 1] in b" \t"):
            return line  # a comment: the shell's argv may be what someone looks for
        i += 1
    if quote:
        return line
    words = line.split()
    first = words[0] if words else b""
    if (not first or first in _SHELL_WORDS or b"=" in first or first[:1] in b"<>#"
            or first[:1].isdigit() and b">" in first or b"<" in first):
        return line
    return b"exec " + line


def _argv(args, shell):
    if shell:
        if not isinstance(args, (str, bytes)):
            raise TypeError("with shell=True, args must be one command string")
        return [b"/bin/sh", b"-c", shell_line(_arg_bytes(args, "the command"))]
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    if args.__class__ is list and all(a.__class__ is str for a in args):
        # the common case, once per task of a large batch: no call per argument
        argv = [a.encode("utf-8", "surrogateescape") for a in args]
    else:
        argv = [_arg_bytes(a, "each argument") for a in args]
    return _checked(argv)


def _checked(argv):
    """argv (a list of bytes), if the engine can exec it."""
    if not argv:
        raise UsageError("args is empty: give at least the program to run")
    for a in argv:
        if b"\0" in a:
            raise UsageError(f"an argument contains a NUL byte: {a!r}")
    return argv


def env_entries(env):
    """*env* (a mapping of str or bytes) as the engine takes it: ``[b"NAME=value", ...]``;
    None stays None (the caller's environment)."""
    return _env(env)


def _env(env):
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of names to values, not {type(env).__name__}")
    out = []
    for k, v in env.items():
        if not isinstance(k, (str, bytes)) or not isinstance(v, (str, bytes)):
            raise TypeError(
                f"env names and values must be str or bytes: env[{k!r}] is {type(v).__name__}"
                if isinstance(k, (str, bytes))
                else f"env names must be str or bytes, not {type(k).__name__}"
            )
        kb, vb = _arg_bytes(k, "env name"), _arg_bytes(v, "env value")
        if not kb or b"=" in kb or b"\0" in kb or b"\0" in vb:
            raise UsageError(f"invalid environment variable name or value: {k!r}")
        out.append(kb + b"=" + vb)
    return out


def _stream(spec, which, to_close):
    """(mode, fd) for the engine."""
    if spec is None:
        return _engine.OUT_CAPTURE, -1
    if spec is DEVNULL or (type(spec) is int and spec == _SUBPROCESS_DEVNULL):
        return _engine.OUT_DEVNULL, -1
    if spec is INHERIT:
        return _engine.OUT_INHERIT, -1
    if spec is STDOUT or (type(spec) is int and spec == _SUBPROCESS_STDOUT):
        if which != "stderr":
            raise UsageError("STDOUT is only meaningful for stderr=")
        return _engine.OUT_TO_STDOUT, -1
    if isinstance(spec, bool):
        raise TypeError(f"{which}= takes None, DEVNULL, INHERIT, a path, a file or an fd")
    if isinstance(spec, int):
        if spec < 0:
            raise UsageError(f"{which}={spec} is not a file descriptor")
        return _engine.OUT_FD, spec
    if isinstance(spec, (str, os.PathLike)):
        fd = os.open(spec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        to_close.append(fd)
        return _engine.OUT_FD, fd
    if hasattr(spec, "fileno"):
        if hasattr(spec, "flush"):
            spec.flush()
        return _engine.OUT_FD, spec.fileno()
    raise TypeError(f"{which}= takes None, DEVNULL, INHERIT, a path, a file or an fd, not {spec!r}")


def _cpus(cpus):
    if cpus is None:
        return []
    if isinstance(cpus, int):
        cpus = [cpus]
    out = [int(c) for c in cpus]
    if not out or any(c < 0 for c in out):
        raise UsageError(f"cpus must be a non-empty list of CPU numbers, not {cpus!r}")
    return out


def _pass_fds(pass_fds):
    if not pass_fds:
        return []
    if isinstance(pass_fds, Mapping):
        pairs = [(int(k), int(v)) for k, v in pass_fds.items()]
    else:
        pairs = [(int(fd), int(fd)) for fd in pass_fds]
    for target, _ in pairs:
        if target < 3:
            raise UsageError("pass_fds targets must be >= 3; use stdout=/stderr= for 0-2")
    return pairs


class Task:
    """A command in flight, returned by :func:`spawn`.

    Attributes:
        args: the command as given.
        tag: any object given to :func:`spawn`, for the caller's bookkeeping.
    """

    __slots__ = ("_h", "_sup", "args", "tag", "deadline", "_result", "_watch_buf", "_cwd", "_exe",
                 "__weakref__")

    def __init__(self, handle, sup, args, tag, deadline, cwd, exe):
        self._h = handle
        self._sup = sup
        self.args = args
        self.tag = tag
        self.deadline = deadline
        self._result = None
        self._watch_buf = None
        self._cwd = cwd
        self._exe = exe

    @property
    def id(self) -> int:
        return self._h.id

    @property
    def pid(self) -> int | None:
        """The leader's pid; waits for the process to exist. None if it could not start.

        A task started by pardo's launcher (the cgroup and pgroup rungs) has its pid as
        soon as it exists, which may be just before its exec: one whose exec then fails
        has given its pid here, and its Result says it could not start (``pid`` None).
        """
        pid = self._sup.wait_started(self._h, -1)
        return pid if pid > 0 else None

    def done(self) -> bool:
        return self._result is not None or self._sup.wait_done(self._h, 0)

    @property
    def result(self) -> Result | None:
        """The :class:`Result` once the task has finished, else None."""
        if self._result is None and self._sup.wait_done(self._h, 0):
            self._finish()
        return self._result

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the task and its whole tree to finish; return its :class:`Result`.

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the task keeps running; this
                is a limit on waiting, not the task's deadline).
        """
        if self._result is None:
            ns = _seconds_to_ns(timeout, "timeout")
            if not self._sup.wait_done(self._h, ns):
                raise TimeoutError(
                    f"task {self.id} ({_short(self.args)}) still running after {timeout} s")
            self._finish()
        return self._result

    def kill(self) -> None:
        """SIGKILL the whole tree now. The task ends with status ``"cancelled"``."""
        self._sup.kill(self._h.id)

    def terminate(self) -> None:
        """SIGTERM the whole tree, SIGKILL it after ``kill_grace``; status ``"cancelled"``."""
        self._sup.terminate(self._h.id)

    def watch(self, buf, idle_recheck: float = 0.001) -> None:
        """Let the engine enforce deadlines written into ``buf`` by the task itself (see
        ``WATCH_BYTES``). Keeps a reference to ``buf`` until :meth:`unwatch`."""
        self._watch_buf = buf
        self._sup.watch(self._h.id, buf, int(idle_recheck * 1e9))

    def unwatch(self) -> None:
        self._sup.unwatch(self._h.id)
        self._watch_buf = None

    def _finish(self):
        if self._result is None:
            self._result = _make_result(self, self._h.result)
            self._watch_buf = None
        return self._result

    def __repr__(self):
        state = self._result.status.value if self._result is not None else "running"
        return f"<pardo.Task {self.id} {_short(self.args)} {state}>"


def _short(args):
    s = args if isinstance(args, (str, bytes)) else " ".join(
        a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in args
    )
    s = s.decode("utf-8", "replace") if isinstance(s, bytes) else s
    return repr(s if len(s) <= 60 else s[:57] + "...")


def _spawn_error(task, stage, err):
    name = _engine.stage_name(stage)
    reason = os.strerror(err) if err else "unknown error"
    args = task.args
    prog = args if isinstance(args, (str, bytes)) else (list(args)[0] if args else "")
    if task._exe:
        prog = task._exe
    prog = os.fsdecode(prog) if isinstance(prog, (bytes, os.PathLike)) else str(prog)
    if name == "exec":
        import errno  # not needed at start-up: only for a task that could not start

        hint = ""
        if err == errno.EACCES and os.path.isdir(prog):
            hint = " (it is a directory)"
        elif err == errno.EACCES and os.path.exists(prog):
            hint = " (the file is not executable)"
        elif err == errno.E2BIG:
            hint = " (the arguments and environment exceed the system's limit)"
        return f"{reason}: {prog!r}{hint}"
    if name == "chdir":
        return f"cannot change to directory {os.fsdecode(task._cwd)!r}: {reason}"
    if name == "affinity":
        return f"cannot pin to the requested CPUs: {reason}"
    if name == "fds":
        return f"cannot set up the task's standard streams and fds: {reason}"
    if name == "nice":
        return f"cannot set the nice value: {reason}"
    if name == "rlimit":
        return f"cannot set the memory limit: {reason}"
    if name == "launcher":
        return ("pardo's launcher process died while the task ran (killed from outside?), so "
                "the task's keeper killed it: it did not finish; run it again")
    if name == "launch":
        return ("pardo's launcher process died (killed from outside?) before it said whether "
                "it started the task: it did not run, or was killed; run it again")
    if name == "helper":
        return (f"pardo's shepherd helper {_supervisor.shepherd_path()!r} could not run "
                f"({reason}); reinstall pardo, or choose another isolation rung")
    return f"{name} failed: {reason} (starting {prog!r})"


def _make_result(task, c):
    """The :class:`Result` of ``task`` from the engine's Completion ``c``."""
    # Each field read is a call into the extension: read each once.
    exited, stage, sig, code = c.exited, c.spawn_stage, c.term_signal, c.exit_code
    error = None
    if stage:
        status = Status.ERROR
        error = _spawn_error(task, stage, c.spawn_errno)
    elif c.timed_out:
        status = Status.TIMEOUT
    elif c.cancelled:
        status = Status.CANCELLED
    elif not exited:
        status = Status.SIGNALED
    elif code == 0:
        status = Status.OK
    else:
        status = Status.FAILED
    pid = c.pid
    return Result(
        args=task.args,
        status=status,
        returncode=code if exited and not stage else None,
        signal=sig if (sig and not exited) else None,
        stdout=c.out,
        stderr=c.err,
        output_truncated=c.out_truncated or c.err_truncated,
        started_at=c.start_wall_ns / 1e9,
        duration=c.duration_ns / 1e9,
        cpu_user=c.cpu_user_us / 1e6,
        cpu_sys=c.cpu_sys_us / 1e6,
        max_rss=c.max_rss_kb * 1024,
        error=error,
        pid=pid if pid > 0 else None,
        deadline=task.deadline,
        watch_seq=c.watch_seq,
        note=c.note or None,
    )


class ResultQueue:
    """Finished tasks, in the order they finished. Give it to :func:`spawn` (``queue=``)
    to run many tasks from one thread; with ``max_running`` it also bounds how many of
    them run at once::

        q = pardo.ResultQueue(max_running=8)
        for f in files:
            pardo.spawn(["gzip", "-t", f], timeout=60, queue=q, tag=f)
        while len(q):
            task = q.get()
            print(task.tag, task.result.status)
    """

    def __init__(self, max_running: int | None = None):
        """
        Args:
            max_running: run at most this many of the queue's tasks at once. Tasks spawned
                beyond it wait inside the engine, which starts the next one the moment
                one of them ends (no round trip through Python), so a batch can be handed over
                far ahead of time and still run exactly ``max_running`` wide. Their
                deadlines count from when they actually start.
        """
        if max_running is not None and (isinstance(max_running, bool)
                                        or not isinstance(max_running, int) or max_running < 1):
            raise UsageError(f"max_running must be a positive int or None, not {max_running!r}")
        self._q = _engine.CompletionQueue(max_running or 0)
        self._tasks = {}
        self.max_running = max_running

    def _add(self, task):
        self._tasks[task.id] = task

    def __len__(self) -> int:
        """Tasks given to this queue and not yet taken out of it."""
        return len(self._tasks)

    def fileno(self) -> int:
        """An fd that is readable while finished tasks wait in the queue."""
        return self._q.fileno()

    def get(self, timeout: float | None = None) -> Task:
        """The next finished task (its ``result`` is set). Raises TimeoutError."""
        got = self.get_many(1, timeout)
        if not got:
            raise TimeoutError(f"no task finished within {timeout} s")
        return got[0]

    def get_many(self, max_items: int = 1024, timeout: float | None = None,
                 min_items: int = 1, max_delay: float | None = None) -> list[Task]:
        """Up to ``max_items`` finished tasks; waits up to ``timeout`` for the first one
        (an empty list when none came). Waiting with nothing in flight is an error.

        ``min_items`` > 1 waits until that many have finished (at most as many as are in
        flight), or until ``timeout``, and then returns what there is: a consumer that
        keeps a :class:`ResultQueue` with ``max_running`` fed ahead of time wakes up once
        per batch of results instead of once per task. ``max_delay`` bounds how long a
        finished task waits for the rest of its batch: the call returns once the oldest
        one there has waited that many seconds, so slow tasks are not held back."""
        if not self._tasks:
            raise RuntimeError("no task is in flight on this queue")
        want = max(1, min(min_items, len(self._tasks)))
        linger = _seconds_to_ns(max_delay, "max_delay")  # -1: no bound
        handles = self._q.pop(max_items, _seconds_to_ns(timeout, "timeout"), want, linger)
        tasks = self._tasks
        out = []
        for h in handles:
            task = tasks.pop(h.id)
            task._finish()
            out.append(task)
        return out


def _per_task_streams(stdout, stderr):
    """True when a stream goes to a path, fd or file, which is opened or flushed per task."""
    simple = (None, DEVNULL, INHERIT)
    return not (stdout in simple and (stderr in simple or stderr is STDOUT))


class SpawnOptions:
    """What :func:`spawn` takes besides the command, checked and converted for the engine
    once: per call of :func:`spawn`, or once per batch (the batch runner's
    :class:`Spawner`), whose tasks then differ only in argv, cpus, executable, queue and tag.

    Attributes:
        request: the engine's ``Request``, handed to ``Supervisor.submit`` with each task.
        timeout: the deadline in seconds as given (a task's ``deadline``).
        cwd: the working directory as bytes (b"": ours), for error messages.
        per_task: True when a stream goes to a path, fd or file: the file is opened (and
            flushed) anew for each task, so each task needs its own options.

    ``rss_unread=True`` (internal; ``pardo run`` with no ``--store`` or ``--results``) says
    nobody will read the tasks' ``max_rss``: the cgroup and pgroup rungs then clone them
    from this process rather than through pardo's launcher, which is faster, and the
    figure then counts this process's own peak (README, "Measured").
    """

    __slots__ = ("request", "timeout", "cwd", "per_task", "_to_close")

    def __init__(self, *, timeout=None, kill_grace=2.0, cwd=None, env=None, input=None,
                 max_output=DEFAULT_MAX_OUTPUT, stdout=None, stderr=None, nice=None,
                 memory_limit=None, linger=False, pass_fds=None, stdin=None, rss_unread=False):
        # The engine's Request starts at spawn()'s defaults; only what differs is set
        # (every attribute set is a call into the extension, once per spawn() call).
        r = self.request = _engine.Request()
        self.timeout = timeout
        if timeout is not None:
            r.timeout_ns = _seconds_to_ns(timeout, "timeout")
        if kill_grace != 2.0:
            r.kill_grace_ns = max(0, _seconds_to_ns(kill_grace, "kill_grace"))
        if max_output.__class__ is not int or max_output != DEFAULT_MAX_OUTPUT:
            if max_output.__class__ is not int or max_output < 0:
                max_output = parse_size(max_output, "max_output", minimum=0)
            r.max_output = max_output
        if env is not None:
            r.env = _env(env)
        self.cwd = b""
        if cwd is not None:
            self.cwd = r.cwd = _arg_bytes(cwd, "cwd")
        if nice is not None:
            if isinstance(nice, bool) or not isinstance(nice, int):
                raise TypeError(f"nice must be an int, not {type(nice).__name__}")
            r.nice = nice
        if memory_limit is not None:
            r.memory_limit = parse_size(memory_limit, "memory_limit")
        if input is not None:
            if isinstance(input, str):
                input = input.encode()
            elif isinstance(input, (bytes, bytearray, memoryview)):
                input = bytes(input)
            else:
                raise TypeError(f"input must be bytes or str, not {type(input).__name__}")
            r.input = input
        if linger:
            r.linger = True
        if rss_unread:
            r.rss_unread = True
        if pass_fds or stdin is not None:
            extra = _pass_fds(pass_fds)
            if stdin is not None:
                # an fd the task reads as its stdin, kept open by the caller for as long as
                # it likes (the engine puts it on fd 0 after /dev/null)
                if input is not None:
                    raise UsageError("give input= or stdin=, not both")
                extra = [(0, int(stdin))] + extra
            r.extra_fds = extra
        self._to_close = []
        self.per_task = _per_task_streams(stdout, stderr)
        if stdout is not None or stderr is not None:
            try:
                r.out_mode, r.out_fd = _stream(stdout, "stdout", self._to_close)
                r.err_mode, r.err_fd = _stream(stderr, "stderr", self._to_close)
            except BaseException:
                self.close()
                raise

    def close(self):
        """Close the files opened for stdout=/stderr= paths (the engine has its own dups)."""
        while self._to_close:
            os.close(self._to_close.pop())

    def submit(self, args, argv, queue, tag=None, executable=None, cpus=None) -> Task:
        """Start one task with these options.

        Args:
            args: the command as given (the task's ``args``).
            argv: the command for the engine, checked (a list of bytes).
            queue: a :class:`ResultQueue`, or None.
            tag: kept on the task.
            executable: bytes, or None for ``argv[0]``.
            cpus: a checked list of CPU numbers (see ``_cpus``), or None.
        """
        sup = _supervisor._sup or _supervisor.get()
        h = sup.submit(self.request, argv, [] if cpus is None else cpus,
                       None if queue is None else queue._q, executable or b"")
        task = Task(h, sup, args, tag, self.timeout, self.cwd, executable or None)
        if queue is not None:
            queue._add(task)
        return task


# The options of the last spawn() that had only scalar ones, and their SpawnOptions: a
# program spawning in a loop passes the same objects each time, and converting them again
# would cost more per task than the 18 positional arguments this seam replaced. Compared
# by identity, not equality (timeout=True must not pass for timeout=1); one tuple, so a
# thread reading it while another replaces it sees either whole.
_plain = (object(),) * 7


def _plain_options(timeout, kill_grace, max_output, nice, memory_limit, linger):
    global _plain
    p = _plain
    if (p[0] is timeout and p[1] is kill_grace and p[2] is max_output and p[3] is nice
            and p[4] is memory_limit and p[5] is linger):
        return p[6]
    options = SpawnOptions(timeout=timeout, kill_grace=kill_grace, max_output=max_output,
                           nice=nice, memory_limit=memory_limit, linger=linger)
    _plain = (timeout, kill_grace, max_output, nice, memory_limit, linger, options)
    return options


def spawn(
    args,
    *,
    timeout: float | None = None,
    kill_grace: float = 2.0,
    cwd=None,
    env: Mapping | None = None,
    input: bytes | str | None = None,
    shell: bool = False,
    max_output: int | str = DEFAULT_MAX_OUTPUT,
    stdout=None,
    stderr=None,
    cpus: Iterable[int] | None = None,
    nice: int | None = None,
    memory_limit: int | str | None = None,
    linger: bool = False,
    queue: ResultQueue | None = None,
    pass_fds=None,
    tag=None,
    executable=None,
) -> Task:
    """Start a command and return at once with its :class:`Task`.

    Takes the arguments of :func:`run`, and:

    Args:
        queue: deliver the finished task to this :class:`ResultQueue` (it can still be
            waited for with :meth:`Task.wait`).
        pass_fds: more fds for the child: ``{child_fd: our_fd}`` or fds kept at the same
            number. They are duplicated before ``spawn`` returns; close yours when you like.
        tag: any object, kept on the task as ``task.tag``.
        executable: the program to run, when it is not ``args[0]`` (which is then only
            the name the program sees, as with :class:`subprocess.Popen`); searched in
            ``PATH`` when it has no slash.
    """
    argv = _argv(args, shell)
    cpu_list = None if cpus is None else _cpus(cpus)
    exe = None if executable is None else _arg_bytes(executable, "executable")
    if (env is None and cwd is None and input is None and stdout is None and stderr is None
            and not pass_fds):
        options = _plain_options(timeout, kill_grace, max_output, nice, memory_limit, linger)
        return options.submit(args, argv, queue, tag, exe, cpu_list)
    # Last: it may open files for stdout=/stderr=, closed once the engine has its dups.
    options = SpawnOptions(timeout=timeout, kill_grace=kill_grace, cwd=cwd, env=env,
                           input=input, max_output=max_output, stdout=stdout, stderr=stderr,
                           nice=nice, memory_limit=memory_limit, linger=linger,
                           pass_fds=pass_fds)
    try:
        return options.submit(args, argv, queue, tag, exe, cpu_list)
    finally:
        options.close()


class Spawner:
    """:func:`spawn` with one :class:`SpawnOptions` for many tasks (the batch runner),
    taking the keywords of :func:`spawn` that hold for every task. A task that needs work
    of its own (streams to paths, fds or files; its own output fds, environment or input)
    gets its own SpawnOptions; the others share the batch's."""

    __slots__ = ("_kw", "_options")

    def __init__(self, **options):
        self._kw = options
        per_task = _per_task_streams(options.get("stdout"), options.get("stderr"))
        self._options = None if per_task else SpawnOptions(**options)

    def __call__(self, argv, queue, tag=None, executable=None, cpus=None, out_fd=-1,
                 err_fd=-1, env_list=None, input=None, stdin=None) -> Task:
        """Start ``argv`` (a list of bytes) into ``queue``; ``executable`` as bytes.
        ``out_fd``/``err_fd``, when given, are fds the task writes its output into;
        ``env_list`` (``[b"NAME=value", ...]``) replaces the environment for this task;
        ``input`` (bytes) is fed to its stdin, or ``stdin`` (an fd) is its stdin."""
        cpu_list = None if cpus is None else _cpus(cpus)
        options = self._options
        if (options is not None and out_fd < 0 and env_list is None and input is None
                and stdin is None):
            return options.submit(argv, _checked(argv), queue, tag, executable, cpu_list)
        # This task's own options: its output fds, environment or input, or streams that
        # are opened per task. The batch's stay as they are for the tasks that need none.
        kw = self._kw
        if out_fd >= 0:
            kw = dict(kw, stdout=out_fd, stderr=err_fd)
        options = SpawnOptions(input=input, stdin=stdin, **kw)
        try:
            if env_list is not None:
                options.request.env = env_list
            return options.submit(argv, _checked(argv), queue, tag, executable, cpu_list)
        finally:
            options.close()


def run(
    args,
    *,
    timeout: float | None = None,
    kill_grace: float = 2.0,
    cwd=None,
    env: Mapping | None = None,
    input: bytes | str | None = None,
    shell: bool = False,
    max_output: int | str = DEFAULT_MAX_OUTPUT,
    stdout=None,
    stderr=None,
    cpus: Iterable[int] | None = None,
    nice: int | None = None,
    memory_limit: int | str | None = None,
    linger: bool = False,
    executable=None,
) -> Result:
    """Run a command to completion and return its :class:`Result`. Never raises for what
    the command did: look at ``result.status`` (or call ``result.check()``).

    The command runs in its own isolation unit (see ``pardo doctor``). When ``timeout``
    seconds have passed, its whole process tree gets SIGTERM and, ``kill_grace`` seconds
    later, SIGKILL; the status is then ``"timeout"``. When the command's first process
    exits, whatever it left running is killed, so nothing outlives the task (pass
    ``linger=True`` to wait for those processes instead, still bounded by ``timeout``).

    Args:
        args: the program and its arguments (str, bytes or path-like; the program is
            looked up in ``PATH``), or with ``shell=True`` one string for ``/bin/sh -c``.
        timeout: seconds the task may run, or None for no limit.
        kill_grace: seconds between SIGTERM and SIGKILL (0: SIGKILL at once).
        cwd: directory to run in.
        env: the complete environment for the command (default: this process's).
        input: bytes (or str, UTF-8 encoded) fed to its stdin; else stdin is /dev/null.
        max_output: bytes kept per captured stream (or a size like ``"64M"``, as for
            ``memory_limit``); the rest is read and dropped, and
            ``result.output_truncated`` is set. Memory stays bounded under any flood.
        stdout, stderr: None to capture; ``pardo.DEVNULL``; ``pardo.INHERIT``; a path,
            file object or fd to write into directly; ``stderr=pardo.STDOUT`` merges.
        cpus: CPU numbers the task may run on (``sched_setaffinity``).
        nice: niceness for the task (higher is lower priority).
        memory_limit: bytes or a string like ``"512M"``: the cgroup's ``memory.max``
            where available, else ``RLIMIT_AS`` of each process.
        linger: wait for the leader's leftover processes instead of killing them.
        executable: the program to run when it is not ``args[0]`` (``args[0]`` is then
            only the name it sees), as with :class:`subprocess.Popen`.

    Raises:
        TypeError, ValueError: the arguments themselves are wrong (e.g. a negative
            timeout, env values that are not strings).
        IsolationUnavailable: the isolation forced by ``PARDO_ISOLATION`` cannot be had.
    """
    task = spawn(
        args, timeout=timeout, kill_grace=kill_grace, cwd=cwd, env=env, input=input,
        shell=shell, max_output=max_output, stdout=stdout, stderr=stderr, cpus=cpus,
        nice=nice, memory_limit=memory_limit, linger=linger, executable=executable,
    )
    try:
        return task.wait()
    except BaseException:
        # Interrupted (Ctrl-C, an exception from a signal handler): the task must not
        # outlive the call that started it.
        task.kill()
        raise


class _LoopWaiter:
    """Per event loop: one ResultQueue whose fd the loop watches; futures by task id."""

    def __init__(self, loop):
        self.queue = ResultQueue()
        self.futures = {}
        loop.add_reader(self.queue.fileno(), self._ready)

    def _ready(self):
        if not len(self.queue):
            return
        for task in self.queue.get_many(timeout=0):
            fut = self.futures.pop(task.id, None)
            if fut is not None and not fut.done():
                fut.set_result(task.result)


_waiters: weakref.WeakKeyDictionary[object, _LoopWaiter] = weakref.WeakKeyDictionary()


async def run_async(args, **kwargs) -> Result:
    """:func:`run` for asyncio: awaits the task without a thread per task (the event loop
    watches the engine's completion fd). Cancelling the awaiting coroutine kills the task's
    tree."""
    import asyncio  # here, not at the top: most programs never need it (~20 ms to import)

    loop = asyncio.get_running_loop()
    waiter = _waiters.get(loop)
    if waiter is None:
        waiter = _waiters[loop] = _LoopWaiter(loop)
    task = spawn(args, queue=waiter.queue, **kwargs)
    fut = loop.create_future()
    waiter.futures[task.id] = fut
    try:
        return await fut
    except asyncio.CancelledError:
        waiter.futures.pop(task.id, None)
        task.kill()
        raise
