"""The batch scheduler behind :func:`pardo.map_commands` and ``pardo run``.

::

    inputs ──► records ──► -N groups ──► _Job(seq, args) ──┐  (pulled lazily, a few ahead)
                                                           ▼
      _start(): template.argv() or sh -c ──► pardo.spawn(queue=q, tag=job)
                                                           │   engine thread: holds the task
                                                           │   until one of q's max_running
                                                           ▼   slots frees, spawns, kills, reaps
      q.get_many()  (or select([q.fileno(), wake fd, pipes]) when there are other fds)
                                                           │
                                                           ▼
                                        _finish(): slot, retry? halt? timeout N%?
                                                           │
                                       keep_order: hold until every earlier seq is out
                                                           ▼
                                                  yield Result (+ seq, slot, command...)

- At most ``jobs`` tasks run. When nothing depends on knowing a task's slot before it starts
  (no ``{%}``, ``--pin``, ``--delay``, ``--halt``, ``N%`` deadline or line mode), the loop
  hands the engine up to ``32 * jobs`` tasks (a ``ResultQueue(max_running=jobs)``): the
  engine starts the next one the moment a task exits, with no round trip through Python.
  Otherwise it submits a task only when a slot is free. Either way inputs stream.
- Slots are the loop's bookkeeping: a task submitted ahead gets the slot of the completion
  that let it start (the engine starts held tasks in submission order).
- A task cancelled while still held by the engine never ran: like GNU parallel, which would
  not have started it, the loop reports nothing for it.
- Deadlines in seconds are the engine's (counted from the real start). ``N%`` deadlines depend
  on the median runtime of successful tasks, which changes while tasks run, so the loop
  enforces those itself: it waits until the earliest task would pass the current limit and
  terminates it.
- ``stop()`` (the CLI calls it from a signal handler) sets a flag and kills what is in flight;
  the loop then drains the queue. It waits on ``q.get_many()`` directly (the engine keeps no
  readiness fd then), or on a selector for a prefetch thread, line-mode pipes or --delay.
"""

from __future__ import annotations

import heapq
import os
import queue
import re
import selectors
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass

from ._inputs import Source, encode, group_records, records

# Pieces of the batch runner live in the folder _batch/ (pipe.py: the --pipe block splitter)
__path__ = [os.path.join(os.path.dirname(__file__), "_batch")]
from ._result import Status
from ._template import Field, Template

__all__ = ["map_commands", "Batch", "HaltPolicy", "parse_jobs", "parse_timeout", "BatchError"]

_MEDIAN_MIN_SAMPLES = 3  # a percentage deadline needs a few successful runs to mean anything
# Tasks handed to the engine ahead of time, per slot (one running, the rest held), so that
# a slot never idles while Python is busy with results; the loop then wakes once per half
# of the held tasks finishing instead of once per task, or once the oldest finished task
# has waited _BATCH_DELAY seconds (results of slow tasks are not held back).
_AHEAD_PER_SLOT = 32
_AHEAD_MAX = 4096  # held tasks at most, whatever -j says
_BATCH_DELAY = 0.02


class BatchError(ValueError):
    """A batch option has a value that cannot be used."""


def parse_jobs(spec, ncpu: int) -> int:
    """GNU's ``-j``: ``N``, ``N%`` of the CPUs, ``+N``/``-N`` relative to them, 0 = no limit."""
    if spec is None:
        return ncpu
    s = str(spec).strip()
    try:
        if s.endswith("%"):
            n = int(float(s[:-1]) * ncpu / 100)
        elif s[:1] in "+-":
            n = ncpu + int(s)
        else:
            n = int(float(s))
            if n == 0:
                n = 1024  # GNU: "as many as possible"; bounded by the fd and process limits
    except ValueError:
        raise BatchError(f"-j/--jobs: {spec!r} is not N, N%, +N or -N") from None
    return max(1, n)


def parse_timeout(spec):
    """``--timeout``: seconds, or ``N%`` of the median runtime. Returns (seconds, fraction)."""
    if spec is None:
        return None, None
    if isinstance(spec, (int, float)):
        secs = float(spec)
        return (secs if secs > 0 else None), None
    s = str(spec).strip()
    try:
        if s.endswith("%"):
            return None, float(s[:-1]) / 100
        secs = float(s)
    except ValueError:
        raise BatchError(f"--timeout: {spec!r} is not seconds or N%") from None
    return (secs if secs > 0 else None), None


@dataclass(frozen=True)
class HaltPolicy:
    """GNU's ``--halt when,why=N[%]``.

    Attributes:
        when: "now" (kill running tasks) or "soon" (let them finish).
        why: "fail", "success" or "done".
        count: absolute threshold, or None when ``fraction`` is used.
        fraction: threshold as a fraction of finished tasks (``N%``).
    """

    when: str
    why: str
    count: int | None
    fraction: float | None

    @classmethod
    def parse(cls, spec):
        if spec is None or spec == "never" or isinstance(spec, HaltPolicy):
            return spec if isinstance(spec, HaltPolicy) else None
        s = str(spec)
        # GNU's older forms: 0..2 and -1/-2, and N% for soon,fail=N%
        short = {"0": None, "1": "soon,fail=1", "2": "now,fail=1", "-1": "soon,success=1",
                 "-2": "now,success=1"}
        if s in short:
            return cls.parse(short[s])
        if re.fullmatch(r"\d+%", s):
            return cls.parse(f"soon,fail={s}")
        m = re.fullmatch(r"(now|soon)?,?(fail|success|done)=(\d+(?:\.\d+)?)(%?)", s)
        if not m:
            raise BatchError(
                f"--halt: {spec!r} is not now|soon,fail|success|done=N[%] (e.g. now,fail=1)"
            )
        when, why, num, pct = m.groups()
        if pct:
            return cls(when or "now", why, None, float(num) / 100)
        return cls(when or "now", why, max(1, int(float(num))), None)


class _RunningMedian:
    """Exact running median with two heaps: O(log n) per sample."""

    def __init__(self):
        self._lo = []  # max-heap (negated)
        self._hi = []

    def __len__(self):
        return len(self._lo) + len(self._hi)

    def add(self, x):
        if self._lo and x > -self._lo[0]:
            heapq.heappush(self._hi, x)
        else:
            heapq.heappush(self._lo, -x)
        if len(self._lo) > len(self._hi) + 1:
            heapq.heappush(self._hi, -heapq.heappop(self._lo))
        elif len(self._hi) > len(self._lo):
            heapq.heappush(self._lo, -heapq.heappop(self._hi))

    def value(self):
        if len(self._lo) > len(self._hi):
            return -self._lo[0]
        return (-self._lo[0] + self._hi[0]) / 2


class _Job:
    __slots__ = ("seq", "args", "slot", "attempts", "task", "started", "kill_reason", "result",
                 "argv", "shell_line", "pipes", "last", "input")

    def __init__(self, seq, args, argv=None, input=None):
        self.seq = seq
        self.args = args
        self.input = input  # --pipe: the block fed to the task's stdin
        self.argv = argv  # a fixed command (from --retry-failed), else rendered per attempt
        self.slot = 0
        self.attempts = 0
        self.task = None
        self.started = 0.0
        self.kill_reason = None
        self.result = None
        self.shell_line = None
        self.pipes = None  # line mode: {read fd: (stream number, pending partial line)}
        self.last = None  # the Result of the previous attempt, while a retry is in flight


_NOT_YET = object()
_END = object()
_NEVER_RAN = object()  # a job's result when it was cancelled before it ever started


class _Prefetch:
    """Reads jobs from a possibly blocking iterator on a daemon thread into a bounded queue.

    ``next()`` never blocks: it gives a job, ``_NOT_YET`` (the thread writes to the wake fd
    when one arrives), or raises StopIteration at the end. An exception raised by the
    iterator is re-raised in the loop's thread.
    """

    def __init__(self, it, wake_fd, size):
        self._q = queue.Queue(size)
        self._wake_fd = wake_fd
        # The thread may still be blocked on a read when the batch ends; once closed it
        # must not write to the wake fd, whose number may by then belong to another file.
        self._lock = threading.Lock()
        self._closed = False
        self._t = threading.Thread(target=self._run, args=(iter(it),), daemon=True,
                                   name="pardo-input")
        self._t.start()

    def _run(self, it):
        try:
            for job in it:
                self._q.put(job)
                self._wake()
        except BaseException as e:  # noqa: BLE001 - handed to the loop's thread
            self._q.put(e)
        self._q.put(_END)
        self._wake()

    def _wake(self):
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._wake_fd, b"i")
            except OSError:
                pass  # full: a wake-up is pending already

    def close(self):
        with self._lock:
            self._closed = True

    def __iter__(self):
        return self

    def __next__(self):
        try:
            item = self._q.get_nowait()
        except queue.Empty:
            return _NOT_YET
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item


class Batch:
    """One batch run: the iterator of results and its controls.

    Built by :func:`map_commands` and by the CLI, which also calls :meth:`stop` from its
    signal handlers and reads the counters for the summary and exit status.
    """

    def __init__(self, template: Template, jobs_iter, *, jobs=None, timeout=None,
                 kill_grace=2.0, retries=1, halt=None, keep_order=False, pin=False, delay=0.0,
                 nice=None, memory_limit=None, env=None, cwd=None, max_output=None,
                 stdout=None, stderr=None, shell="/bin/sh", results=None, line_sink=None,
                 input_may_block=False, total=None, job_env=False, window=None):
        import pardo

        self._pardo = pardo
        self.template = template
        self._jobs_iter = jobs_iter
        cpus = sorted(os.sched_getaffinity(0))
        self.jobs = parse_jobs(jobs, len(cpus))
        self.timeout, self.timeout_fraction = parse_timeout(timeout)
        self.retries = max(1, int(retries or 1))
        self.halt = HaltPolicy.parse(halt)
        self.keep_order = keep_order
        self.delay = float(delay or 0.0)
        self._pin = [[cpus[(s - 1) % len(cpus)]] for s in range(self.jobs + 1)] if pin else None
        self._shell = encode(shell)
        self._results_dir = results
        # line mode (--line-buffer): output comes through our own pipes, whole lines at a
        # time, to line_sink(job, stream, data) while tasks run
        self._line_sink = line_sink
        # An input that can block (a pipe, a terminal) is read on a thread, so that the
        # loop keeps reaping and starting tasks while it waits for the next line.
        self._input_may_block = input_may_block
        # number of jobs when known up front: --halt N% counts against it (as GNU does),
        # else against the tasks finished so far
        self.total = total
        self._sel = None
        kw = {"kill_grace": kill_grace}
        for k, v in (("timeout", self.timeout), ("nice", nice), ("memory_limit", memory_limit),
                     ("env", env), ("cwd", cwd), ("max_output", max_output),
                     ("stdout", stdout), ("stderr", stderr)):
            if v is not None:
                kw[k] = v
        self._spawn_kw = kw
        self._spawner = pardo._run._Spawner(**kw)
        self._stop_reason = None  # signal number, or "halt"
        self._wake_r = self._wake_w = -1  # made when iteration starts
        # counters the CLI reads
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.succeeded = 0
        self.by_status: dict[str, int] = {}
        self.halt_exit = None  # exit status decided by a halt policy
        self.halt_result = None  # the result that made the halt policy stop the batch
        self.running: dict = {}  # {task: job} of the tasks that hold a slot
        self._held: deque = deque()  # jobs handed to the engine ahead, waiting for a slot
        self._exe_cache: dict = {}  # program name -> where PATH finds it (see _executable)
        self._free: list = []  # free slots; pop() gives the lowest
        self._median = _RunningMedian() if self.timeout_fraction else None
        uses_slot = any(isinstance(p, Field) and p.op == "%"
                        for g in template.groups if not isinstance(g, str) for p in g)
        # job_env: GNU's PARALLEL_SEQ and PARALLEL_JOBSLOT in every task's environment.
        # A task's slot is only known before it starts when nothing is handed over ahead,
        # so PARALLEL_JOBSLOT is set when the command mentions it (or uses {%}).
        self._base_env = None
        if job_env:
            base = dict(os.environ if env is None else env)
            base.pop("PARALLEL_SEQ", None)
            base.pop("PARALLEL_JOBSLOT", None)
            self._base_env = pardo._run._env(base)
            if any("PARALLEL_JOBSLOT" in g for g in template.groups if isinstance(g, str)) or \
                    any(isinstance(p, str) and "PARALLEL_JOBSLOT" in p
                        for g in template.groups if not isinstance(g, str) for p in g):
                uses_slot = True
        self._env_slot = uses_slot
        # Handing tasks over ahead of time is only exact when nothing needs a task's slot, or
        # the moment it starts, before it starts; and when a halt cannot find tasks started
        # that GNU parallel would never have started.
        # window: jobs read ahead of the running ones at most (--pipe: each holds a block)
        self._window = window
        ahead = not (uses_slot or pin or self.delay or self.halt is not None
                     or self.timeout_fraction is not None or line_sink is not None
                     or window is not None)
        held_max = max(2, min((_AHEAD_PER_SLOT - 1) * self.jobs, _AHEAD_MAX))
        self._max_in_flight = self.jobs + held_max if ahead else self.jobs

    # -- control -------------------------------------------------------------------------

    def stop(self, reason=None):
        """Stop starting tasks and kill every running tree (safe from a signal handler)."""
        if self._stop_reason is None:
            self._stop_reason = reason if reason is not None else "stop"
        # Killing here, not only in the loop, ends a wait in q.get_many() at once.
        self._kill_all()
        try:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full: a wake-up is already pending

    def _kill_all(self):
        """Kill every task in flight; return their jobs.

        Newest first: the engine starts held tasks in submission order, so the held ones
        are cancelled before a killed running one frees its slot for them. The copies are
        made by single C calls, so a signal handler interrupting the loop sees consistent
        containers.
        """
        jobs = list(reversed(self._held)) + list(reversed(self.running.values()))
        for job in jobs:
            job.task.kill()
        return jobs

    @property
    def stopped_by(self):
        return self._stop_reason

    # -- the loop -------------------------------------------------------------------------

    def _command_args(self, job, slot):
        if job.argv is not None:
            return job.argv
        argv = self.template.argv(job.args, job.seq, slot)
        if argv is not None:
            return [encode(a) for a in argv]
        line = self.template.command(job.args, job.seq, slot)
        job.shell_line = line
        return [self._shell, b"-c", encode(line)]

    def command_line(self, job_or_result):
        """The shell command line of a job, as GNU parallel would show it."""
        j = job_or_result
        if j.shell_line is None:
            if j.argv is not None:
                j.shell_line = j.argv[-1].decode("utf-8", "surrogateescape")
            else:
                j.shell_line = self.template.command(j.args, j.seq, j.slot)
        return j.shell_line

    def _executable(self, program):
        """Where PATH finds ``program``, looked up once per batch (as a shell's hash
        table does): with a long PATH, the search costs a failed exec per entry per task.
        None when it has a slash or is not found (the engine then reports it)."""
        try:
            return self._exe_cache[program]
        except KeyError:
            pass
        exe = None
        name = program.decode("utf-8", "surrogateescape") if isinstance(program, bytes) else program
        if "/" not in name:
            env = self._spawn_kw.get("env")
            # the engine's search: the task's own PATH, else ours; /bin:/usr/bin without one
            path = (os.environ if env is None else env).get("PATH", "/bin:/usr/bin")
            exe = shutil.which(name, path=path)
            if exe is not None:
                exe = encode(exe)
        self._exe_cache[program] = exe
        return exe

    def _start(self, job, q):
        """Hand a job to the engine: in a free slot, or held until a slot frees (slot 0)."""
        slot = job.slot = self._free.pop() if self._free else 0
        job.attempts += 1
        job.kill_reason = None
        cpus = None if self._pin is None else self._pin[slot]
        if self._median is not None:
            job.started = time.monotonic()  # exact: with N% deadlines nothing is held
        argv = self._command_args(job, slot)
        exe = self._executable(argv[0])
        env_list = None
        if self._base_env is not None:
            env_list = self._base_env + [b"PARALLEL_SEQ=%d" % job.seq]
            if self._env_slot:
                env_list.append(b"PARALLEL_JOBSLOT=%d" % slot)
        if self._line_sink is None:
            task = job.task = self._spawner(argv, q, job, exe, cpus, env_list, job.input)
        else:
            kw = dict(self._spawn_kw)
            if env_list is not None:
                kw["env"] = dict(e.split(b"=", 1) for e in env_list)
            (r1, w1), (r2, w2) = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
            try:
                job.task = self._pardo.spawn(argv, queue=q, tag=job, executable=exe, cpus=cpus,
                                             input=job.input, **dict(kw, stdout=w1, stderr=w2))
            finally:
                os.close(w1)  # the engine holds its own copies now
                os.close(w2)
            job.pipes = {r1: [1, b""], r2: [2, b""]}
            for fd in job.pipes:
                self._sel.register(fd, selectors.EVENT_READ, job)
            task = job.task
        if slot:
            self.running[task] = job
        else:
            self._held.append(job)
        self.started += 1

    def _release(self, slot):
        """A task that held ``slot`` is over: the engine has started the oldest held task
        in its place (or will start the next one submitted)."""
        if self._held:
            job = self._held.popleft()
            job.slot = slot
            self.running[job.task] = job
        else:
            self._free.append(slot)

    def _claim_slot(self, job):
        """Give a slot to a held job that turned out to have run already.

        The engine started it ahead of an older held task (a submission and an exit in
        the same engine round); take the slot of the task slotted last, most likely the
        one still waiting, and hold that one instead.
        """
        self._held.remove(job)
        if self._free:
            job.slot = self._free.pop()
            return
        _, other = self.running.popitem()  # the last inserted
        job.slot, other.slot = other.slot, 0
        self._held.appendleft(other)

    def _pipe_readable(self, job, fd):
        """Read what a line-mode pipe has; hand complete lines (or the last, unterminated
        one at EOF) to the sink."""
        entry = job.pipes[fd]
        data = os.read(fd, 1 << 16)
        if data:
            buf = entry[1] + data
            cut = buf.rfind(b"\n") + 1
            if cut:
                self._line_sink(job, entry[0], buf[:cut])
            entry[1] = buf[cut:]
            return
        if entry[1]:
            self._line_sink(job, entry[0], entry[1])
        self._sel.unregister(fd)
        os.close(fd)
        del job.pipes[fd]

    def _limit(self):
        """The current N%-of-median deadline in seconds, or None."""
        if self._median is None or len(self._median) < _MEDIAN_MIN_SAMPLES:
            return None
        return self._median.value() * self.timeout_fraction

    def _enforce_fraction(self, now):
        """Terminate tasks past the N% deadline; return seconds until the next could be."""
        limit = self._limit()
        if limit is None:
            return None
        nxt = None
        for job in self.running.values():
            if job.kill_reason is not None:
                continue
            left = job.started + limit - now
            if left <= 0:
                job.kill_reason = "timeout"
                job.task.terminate()
            elif nxt is None or left < nxt:
                nxt = left
        return nxt

    def _halt_check(self, result):
        h = self.halt
        if h is None or self._stop_reason is not None:
            return
        ok = result.status == Status.OK
        n = {"fail": self.failed, "success": self.succeeded, "done": self.finished}[h.why]
        if h.why == "fail" and ok or h.why == "success" and not ok:
            return
        if h.count is not None:
            hit = n >= h.count
        else:
            hit = n >= h.fraction * (self.total or self.finished)
        if hit:
            self.halt_result = result  # the task that triggered it (the CLI says so)
            if h.why == "success":
                self.halt_exit = 0
            elif h.count == 1:
                # GNU: the exit status of the task that made it halt (signal + 128)
                if result.status == Status.FAILED:
                    self.halt_exit = result.returncode & 255 or 1
                elif result.status == Status.OK:
                    self.halt_exit = 0
                else:
                    self.halt_exit = 128 + (result.signal or 15) if result.signal else 1
            elif h.count is not None:
                self.halt_exit = min(self.failed, 101)  # GNU: the number of failed tasks
            else:
                # GNU: the percentage of failed tasks, rounded up
                self.halt_exit = -(-100 * self.failed // (self.total or self.finished or 1))
            self._stop_reason = "halt"
            if h.when == "now":
                self._kill_all()

    def _finish(self, task, q):
        """Handle one completed task; return its job if that job is done for good.

        Frees the task's slot, or starts the job again when it is to be retried.
        """
        job = task.tag
        r = task.result
        if r.pid is None and r.status == Status.CANCELLED:
            # Cancelled while the engine still held it: it never ran, and GNU parallel
            # would never have started it. Report the attempt before, if any.
            if job.slot:
                del self.running[task]
                self._release(job.slot)
            else:
                self._held.remove(job)
            self.started -= 1
            job.attempts -= 1
            job.task = None
            if job.last is None:
                job.result = _NEVER_RAN
                return None
            job.slot = job.last.slot
            return self._done(job, job.last)
        if job.slot:
            del self.running[task]
        else:
            self._claim_slot(job)
        if job.pipes:
            # The whole tree is gone, so every writer is closed: read to EOF.
            for fd in list(job.pipes):
                while fd in job.pipes:
                    self._pipe_readable(job, fd)
        if job.kill_reason == "timeout":
            r.status = Status.TIMEOUT
            r.deadline = self._limit()
        self._release(job.slot)
        if (r.status != Status.OK and job.attempts < self.retries and self._stop_reason is None
                and r.status != Status.CANCELLED):
            r.slot = job.slot
            job.last = r
            self._start(job, q)  # without anything held: the slot just released
            return None
        return self._done(job, r)

    def _done(self, job, r):
        """Count and record the final result of a job; return the job."""
        job.task = None
        job.last = None
        job.input = None  # a --pipe block is not needed any more
        job.result = r
        r.seq, r.slot, r.inputs, r.attempts = job.seq, job.slot, job.args, job.attempts
        r.job = job
        self.finished += 1
        st = r.status.value
        self.by_status[st] = self.by_status.get(st, 0) + 1
        if r.status == Status.OK:
            self.succeeded += 1
            if self._median is not None:
                self._median.add(r.duration)
        else:
            self.failed += 1
        if self._results_dir is not None:
            write_results(self._results_dir, job, r)
        self._halt_check(r)
        return job

    def __iter__(self):
        jobs = self.jobs
        limit = self._max_in_flight
        q = self._pardo.ResultQueue(max_running=jobs) if limit > jobs else self._pardo.ResultQueue()
        # A selector only when there is more than the queue to watch: the queue's fd costs
        # the engine two system calls per task, and a select round costs one more wake-up.
        sel = None
        if self._input_may_block or self._line_sink is not None or self.delay:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            sel = self._sel = selectors.DefaultSelector()
            qfd = q.fileno()
            sel.register(qfd, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
        self._free = list(range(jobs, 0, -1))  # pop() hands out the lowest slot first
        running, held = self.running, self._held
        keep_order = self.keep_order
        order = deque()
        if self._input_may_block:
            source = _Prefetch(self._jobs_iter, self._wake_w,
                               max(64, 2 * jobs) if self._window is None else self._window)
        else:
            source = iter(self._jobs_iter)
        exhausted = False
        next_start = 0.0
        killed = False
        try:
            while True:
                wait = None
                while (len(running) + len(held) < limit and not exhausted
                       and self._stop_reason is None):
                    if self.delay:
                        now = time.monotonic()
                        if now < next_start:
                            wait = next_start - now
                            break
                        next_start = now + self.delay
                    job = next(source, None)
                    if job is None:
                        exhausted = True
                        break
                    if job is _NOT_YET:
                        break  # the prefetch thread wakes us when the next one is read
                    self._start(job, q)
                    if keep_order:
                        order.append(job)
                if self._stop_reason is not None and not killed and self._stop_reason != "halt":
                    killed = True
                    self._kill_all()
                if not (running or held) and (exhausted or self._stop_reason is not None):
                    break
                if self._median is not None:
                    nxt = self._enforce_fraction(time.monotonic())
                    if nxt is not None:
                        wait = nxt if wait is None else min(wait, nxt)
                if sel is None:
                    # Something is in flight here (only a delay or a prefetch, which have a
                    # selector, can leave the loop waiting with nothing in flight); stop()
                    # kills what is in flight, which ends this wait too.
                    # With tasks held in the engine, wake once per few results: the
                    # engine keeps every slot busy meanwhile.
                    done = q.get_many(timeout=wait, min_items=max(1, len(held) // 2),
                                      max_delay=_BATCH_DELAY)
                else:
                    # Wait on the queue's fd first and pop only when it is readable: a pop
                    # that finds the queue empty costs a timed condition-variable wait.
                    done = ()
                    for key, _ in sel.select(wait):
                        if key.fd == qfd:
                            done = q.get_many(timeout=0)
                        elif key.data is not None:
                            self._pipe_readable(key.data, key.fd)
                        else:
                            try:
                                os.read(self._wake_r, 4096)
                            except BlockingIOError:
                                pass
                for task in done:
                    job = self._finish(task, q)
                    if job is not None and not keep_order:
                        yield job.result
                while order and order[0].result is not None:
                    r = order.popleft().result
                    if r is not _NEVER_RAN:
                        yield r
        finally:
            # Reached on normal end, on an exception in the consumer, and on close(): no
            # task may outlive the batch.
            left = self._kill_all()
            for job in left:
                try:
                    job.task.wait()
                except Exception:
                    pass
            if isinstance(source, _Prefetch):
                source.close()
            for job in left:
                for fd in job.pipes or ():
                    os.close(fd)
            running.clear()
            held.clear()
            if sel is not None:
                sel.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1


def _results_path_part(v: str) -> str:
    # GNU parallel's escaping of a value used as a directory name
    return v.replace("\\", "\\\\").replace("/", "\\_") or "\\_"  # noqa: E501


def write_results(directory, job, result):
    """``--results DIR``: DIR/1/<value>/2/<value>/{seq,stdout,stderr} as GNU parallel."""
    parts = [directory]
    for i, v in enumerate(job.args, 1):
        parts += [str(i), _results_path_part(v)]
    d = os.path.join(*[encode(p) for p in parts])
    os.makedirs(d, exist_ok=True)
    for name, data in ((b"seq", f"{job.seq}\n".encode()), (b"stdout", result.stdout or b""),
                       (b"stderr", result.stderr or b"")):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def _as_record(item):
    if isinstance(item, tuple):
        return tuple(_as_str(v) for v in item)
    if isinstance(item, list):
        return tuple(_as_str(v) for v in item)
    return (_as_str(item),)


def _as_str(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return v if isinstance(v, str) else str(v)


def numbered_jobs(arg_groups, skip=None, start=1):
    """Number argument tuples into jobs, leaving out the seqs in *skip* (resume)."""
    seq = start - 1
    for args in arg_groups:
        seq += 1
        if skip is not None and seq in skip:
            continue
        yield _Job(seq, args)


def _count_jobs(inputs, max_args):
    if not isinstance(inputs, (list, tuple, range)) or (
            inputs and isinstance(inputs[0], Source)):
        return None
    return -(-len(inputs) // max_args) if max_args else len(inputs)


def map_commands(command, inputs=(), *, jobs=None, timeout=None, kill_grace=2.0, retries=1,
                 halt=None, keep_order=False, max_args=None, colsep=None, replace="{}",
                 pin=False, delay=0.0, nice=None, memory_limit=None, env=None, cwd=None,
                 max_output=None, stdout=None, stderr=None, results=None):
    """Run a command template once per input, in parallel, and yield each task's Result.

    The template speaks GNU parallel: ``command`` is shell code in which ``{}`` stands for
    the input (also ``{.}`` ``{/}`` ``{//}`` ``{/.}`` ``{#}`` ``{%}``, and ``{1}`` ``{2}`` ...
    for the columns of a tuple input). Values are shell-quoted, so an input is always data;
    when the command needs nothing of a shell it is exec'd directly. ``{}`` is appended when
    the command names no replacement string.

    Inputs are consumed lazily, one per free slot, so an input of any length streams::

        for r in pardo.map_commands("gzip -9 {}", pathlib.Path(".").glob("*.log"),
                                    timeout=60, jobs=8):
            print(r.inputs[0], r.status)

    Args:
        command: the template, a str (or a list of words, joined by spaces).
        inputs: an iterable of values (str, bytes, paths, numbers) or of tuples of values.
        jobs: parallel slots; default the CPUs this process may run on. GNU forms such as
            ``"50%"`` or ``"+1"`` are accepted.
        timeout: per-task deadline in seconds, or ``"N%"`` of the median runtime of
            successful tasks. The whole process tree of a late task is killed.
        kill_grace: seconds between SIGTERM and SIGKILL when a deadline fires.
        retries: attempts per task (GNU's ``--retries``: 3 means up to 3 runs).
        halt: GNU's ``--halt`` policy, e.g. ``"now,fail=1"`` or ``"soon,success=50%"``.
        keep_order: yield in input order instead of completion order.
        max_args: GNU's ``-N``: that many inputs per command.
        colsep: regex splitting each input value into columns ``{1}`` ``{2}`` ...
        pin: run slot i on its own CPU (for benchmark harnesses).
        delay: minimum seconds between two task starts.
        nice, memory_limit, env, cwd, max_output, stdout, stderr: passed to
            :func:`pardo.spawn` for every task (default: output captured in the Result).
        results: a directory to save each task's output in, laid out as GNU's ``--results``.

    Yields:
        :class:`pardo.Result`, with extra attributes ``seq`` (1-based input number),
        ``slot``, ``inputs`` (the tuple of values), ``attempts`` and ``job``.
        Closing the generator early kills the tasks still running.
    """
    if isinstance(inputs, (str, bytes)):
        raise TypeError("inputs must be an iterable of values (a str is not: wrap it in a list)")
    words = [command] if isinstance(command, str) else list(command)
    template = Template(words, replace=replace, context=max_args is not None)
    if isinstance(inputs, Source) or (isinstance(inputs, list) and inputs
                                      and all(isinstance(s, Source) for s in inputs)):
        recs = records(inputs if isinstance(inputs, list) else [inputs], colsep=colsep)
    else:
        recs = (_as_record(i) for i in inputs)
        if colsep is not None:
            split = re.compile(colsep).split
            recs = (tuple(c for v in r for c in split(v)) for r in recs)
    batch = Batch(template, numbered_jobs(group_records(recs, max_args)), jobs=jobs,
                  timeout=timeout, kill_grace=kill_grace, retries=retries, halt=halt,
                  keep_order=keep_order, pin=pin, delay=delay, nice=nice,
                  memory_limit=memory_limit, env=env, cwd=cwd, max_output=max_output,
                  stdout=stdout, stderr=stderr, results=results,
                  total=_count_jobs(inputs, max_args))
    return iter(batch)
