"""The batch scheduler behind :func:`pardo.map_commands` and ``pardo run``.

::

    inputs ──► records ──► -N groups ──► Job(seq, args) ──┐  (pulled lazily, a few ahead;
    (or a joblog's rows: --resume, --retry-failed)        │   on a thread if input blocks)
                                                          ▼
      _start(): template.argv() or sh -c ──► spawn(queue=q, tag=job)
                                                          │   engine thread: holds the task
                                                          │   until fewer than q's
                                                          ▼   max_running run; spawns, kills
      q.get_many()  (or select([q.fileno(), wake fd, pipes]) when there are other fds)
                                                          │
                                                          ▼
                                       _finish(): job slot, retry? halt? timeout N%?
                                                          │
                                      keep_order: hold until every earlier seq is out
                                                          ▼
                                      yield Result (+ seq, slot, command...), then its
                                      joblog row; --results files and the store's
                                      record (every attempt) as it finishes

- At most ``jobs`` tasks run. When nothing depends on knowing a task's job slot before it
  starts (no ``{%}``, ``--pin``, ``--delay``, ``--halt``, ``N%`` deadline or line mode), the
  loop hands the engine up to ``32 * jobs`` tasks (a ``ResultQueue(max_running=jobs)``): the
  engine starts the next one the moment a task exits, with no round trip through Python.
  Otherwise it submits a task only when a job slot is free. Either way inputs stream.
- Job slots are the loop's bookkeeping: a task submitted ahead gets the slot of the
  completion that let it start (the engine starts held tasks in submission order).
- A task cancelled while still held by the engine never ran: like GNU parallel, which would
  not have started it, the loop reports nothing for it.
- Deadlines in seconds are the engine's (counted from the real start). ``N%`` deadlines depend
  on the median runtime of successful tasks, which changes while tasks run, so the loop
  enforces those itself by its clock: it waits until the earliest task would pass the
  current limit and terminates it.
- A result's joblog row is written once the consumer is done with the result (when it asks
  for the next one, or closes the iterator), so that a ``pardo`` killed in between runs that
  job again on ``--resume`` rather than losing its output.
- ``interrupt()`` (the CLI calls it from its first SIGINT/SIGTERM handler, and ``--halt now``
  does the same) sets a flag, cancels the held tasks and sends the running ones SIGTERM, then
  SIGKILL after the kill grace; ``stop()`` (a second signal, a closed stdout) kills at once.
  Either way the loop then drains the queue. It waits on ``q.get_many()`` directly (the
  engine keeps no readiness fd then), or on a selector for a prefetch thread, line-mode
  pipes or --delay.
- ``spool`` (``pardo run``'s --group): each task writes its output into temporary files
  (spool.py), so that output waiting to be printed never fills memory; a store records a
  big stream by taking its file (its own fd of it), never by reading it.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import time
from collections import deque

from .._errors import BatchError
from .._result import Status
from .._run import ResultQueue, Spawner, env_entries, shell_line
from .._supervisor import isolation
from . import spool as _spool
from .inputs import encode
from .jobs import NOT_YET, Job, Prefetch, planned_jobs, read_resume, skipped_seqs, stored_jobs
from .options import HaltPolicy, MedianDeadline, parse_jobs, parse_timeout
from .pipe import RoundRobin
from .results_dir import write_results

# Tasks handed to the engine ahead of time, per job slot (one running, the rest held), so
# that a slot never idles while Python is busy with results; the loop then wakes once per
# half of the held tasks finishing instead of once per task, or once the oldest finished
# task has waited _BATCH_DELAY seconds (results of slow tasks are not held back).
AHEAD_PER_SLOT = 32
_AHEAD_MAX = 4096  # held tasks at most, whatever -j says
_BATCH_DELAY = 0.02
_NEVER_RAN = object()  # a job's result when it was cancelled before it ever started
# GNU parallel's exit statuses for a batch that did not run to its end.
# "start": the caller stopped it because the first tasks all failed to start for one
# reason; "unstartable": no task can start on this host; 255 is GNU parallel's "other error".
_EXIT_BY_STOP = {signal.SIGINT: 130, signal.SIGTERM: 143, "pipe": 141, "start": 255,
                 "unstartable": 255}


def job_slots(jobs, engine=None) -> int:
    """The job slots a batch has for ``-j`` *jobs*: of this machine's CPUs, or (with an
    *engine* that runs tasks elsewhere) of all the engine's slots together, at most."""
    if engine is None:
        return parse_jobs(jobs, len(os.sched_getaffinity(0)))
    return min(engine.slots, parse_jobs(jobs, engine.slots))


class Batch:
    """One batch run: the iterator of results and its controls.

    Built by :func:`pardo.map_commands` and by ``pardo run``, which also calls
    :meth:`interrupt` from its signal handlers and reads the counters for its summary and
    progress bar. The options not listed below are :func:`pardo.map_commands`' and
    :func:`pardo.spawn`'s.

    Args:
        template: the parsed command template.
        arg_groups: the argument tuple of each job, in job order (``{#}`` counts from 1).
        joblog: GNU parallel's joblog to write a row to per finished job (``-``: stdout).
        resume: pick up from ``joblog`` (or from ``store`` when given): ``"resume"`` (skip
            the jobs it has), ``"resume-failed"`` (skip those that succeeded) or
            ``"retry-failed"`` (run its failed commands again, ignoring ``arg_groups``).
        store: a job store opened for this run (the store part's ``RunStore``): every
            finished attempt is recorded there, a resume is planned from it, and the
            batch stops (as :meth:`stop` with reason ``"store"``) if it fails mid-run.
            Whoever opened it ends its run.
        engine: None for this process's engine, or a stand-in that runs tasks elsewhere
            with the same two entry points, ``spawner(**spawn_kw)`` and
            ``queue(max_running=)``, and its ``slots`` in all (``-j`` then means that
            many, at most; ``pardo run --mpi`` passes the mpi part's); inputs,
            templates, retries, halt, ``-k``, output, joblog and store stay this loop's.
        clock: the monotonic clock of ``--delay`` and ``N%`` deadlines (tests pass a fake).
        line_sink: line mode (``--line-buffer``): output comes through our own pipes, whole
            lines at a time, to ``line_sink(job, stream, data)`` while tasks run; ``data``
            may be a bytearray that is ours again once the sink returns (write it, keep none).
        input_may_block: ``arg_groups`` may wait on another process (a pipe, a terminal):
            it is read on a thread, so that the loop keeps reaping and starting tasks.
        total: the number of jobs when known up front: ``--halt N%`` counts against it, as
            GNU does (else against the tasks finished so far).
        job_env: GNU's ``PARALLEL_SEQ`` in every task's environment, and
            ``PARALLEL_JOBSLOT``, as GNU does (then no task is handed to the engine ahead
            of a free slot: a task's slot is only known before it starts that way).
        blocks: ``arg_groups`` are ``--pipe`` blocks of bytes, each fed to one job's stdin;
            ``"round-robin"``: to ``jobs`` jobs whose stdin stays open, in turn (pipe.py).
        window: jobs read ahead of the running ones at most (``--pipe``: each holds a
            block), else a default.
        results_names: ``--results DIR`` with ``--header``: the name of each input column,
            which names its directories (else the column's number).
        results_width: the values of one input record (the sources), when known: a job of
            several records (``-N``) names each record's columns from 1 again, as GNU does.
        spool: each task writes its output into temporary files (see spool.py) instead of
            pipes read into memory; a Result carries it as bytes or, when big, as files
            (``Result.spool``, read with :func:`copy_out`) until it has been yielded.
    """

    def __init__(self, template, arg_groups, *, jobs=None, timeout=None, kill_grace=2.0,
                 retries=1, halt=None, keep_order=False, pin=False, delay=0.0, nice=None,
                 memory_limit=None, env=None, cwd=None, max_output=None, stdout=None,
                 stderr=None, shell="/bin/sh", results=None, joblog=None, resume=None,
                 line_sink=None, input_may_block=False, total=None, spool=False,
                 job_env=False, blocks=False, window=None, clock=time.monotonic,
                 store=None, engine=None, results_names=None, results_width=None,
                 rss_unread=False):
        self.template = template
        cpus = sorted(os.sched_getaffinity(0))
        self.jobs = job_slots(jobs, engine)
        self.timeout, timeout_fraction = parse_timeout(timeout)
        self.retries = max(1, int(retries or 1))
        self.halt = HaltPolicy.parse(halt)
        self.keep_order = keep_order
        self.delay = float(delay or 0.0)
        self._clock = clock
        self._pin = [[cpus[(s - 1) % len(cpus)]] for s in range(self.jobs + 1)] if pin else None
        self._shell = encode(shell)
        self._results_dir = results
        self.round_robin = None  # --round-robin's feeder (its ``unfed`` says input was left)
        self._results_names = (results_names, results_width)
        self._joblog_path = joblog
        self._resume = resume
        self._store = store
        if blocks == "round-robin":
            if store is not None or resume is not None:
                raise BatchError("--round-robin does not resume: its jobs share the input")
            if engine is not None:
                raise BatchError("--round-robin needs the jobs on this machine (not with "
                                 "--mpi): their stdin stays open to pardo")
            feeder = self.round_robin = RoundRobin(arg_groups, self.jobs)
            self._jobs_iter = (Job(seq, (), stdin=fd) for seq, fd in enumerate(feeder.jobs(), 1))
            skipped = set()
        elif store is not None:
            self._jobs_iter = stored_jobs(arg_groups, resume, store, self._shell, blocks)
            skipped = set() if resume is None else None  # (the store's skip is lazy)
        else:
            logged = read_resume(joblog, resume) if resume is not None else None
            self._jobs_iter = planned_jobs(arg_groups, resume, logged, self._shell, blocks)
            skipped = skipped_seqs(resume, logged)
        self._line_sink = line_sink
        # made when iteration starts (see _loop): the rung decides whether files are reused
        # Spooling is for tasks on this machine (with --mpi output comes back in results).
        # A job store takes a big stream's file as it is (linked or copied beside the
        # store), so a stored run's memory stays bounded too.
        self._spool_wanted = bool(spool) and line_sink is None and engine is None
        self._spool = None
        self._spool_open: set = set()  # results yielded-to-be that still hold files
        self._input_may_block = input_may_block
        # Known only while every input job will run (a resume that skips none).
        self.total = total if skipped == set() else None
        self._sel = None
        kw = {"kill_grace": kill_grace}
        for k, v in (("timeout", self.timeout), ("nice", nice), ("memory_limit", memory_limit),
                     ("env", env), ("cwd", cwd), ("max_output", max_output),
                     ("stdout", stdout), ("stderr", stderr)):
            if v is not None:
                kw[k] = v
        if rss_unread and engine is None:
            kw["rss_unread"] = True  # see SpawnOptions
        self._spawn_kw = kw
        self._engine = engine
        if engine is not None and (line_sink is not None or pin):
            raise BatchError("--line-buffer and --pin need the tasks on this machine "
                             "(not with --mpi)")
        self._spawner = Spawner(**kw) if engine is None else engine.spawner(**kw)
        self._stop_reason = None  # signal number, "pipe", "start", "unstartable", "store",
        # "stop" or "halt"
        self._gentle = False  # stopping with SIGTERM first (interrupt(), --halt now)
        self._wake_r = self._wake_w = -1  # made when iteration starts
        # counters the CLI reads
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.succeeded = 0
        self.interrupted = 0  # ran, then ended by stop() or interrupt() ("cancelled")
        self.by_status: dict[str, int] = {}
        self.halt_exit = None  # exit status decided by a halt policy
        self.halt_result = None  # the result that made the halt policy stop the batch
        self.running: dict = {}  # {task: job} of the tasks that hold a job slot
        self._held: deque = deque()  # jobs handed to the engine ahead, waiting for a slot
        self._exe_cache: dict = {}  # program name -> where PATH finds it (see _executable)
        # free job slots, as GNU hands them out: the one freed first, else a new number
        self._free: deque = deque()
        self._slots_made = 0
        self._pct = None if timeout_fraction is None else MedianDeadline(timeout_fraction)
        # Handing tasks over ahead of time is only exact when nothing needs a task's job
        # slot, or the moment it starts, before it starts; and when a halt cannot find tasks
        # started that GNU parallel would never have started.
        ahead = not (template.uses_slot or pin or self.delay or self.halt is not None
                     or self._pct is not None or line_sink is not None)
        uses_slot = template.uses_slot
        self._base_env = None
        if job_env:
            base = dict(os.environ if env is None else env)
            base.pop("PARALLEL_SEQ", None)
            base.pop("PARALLEL_JOBSLOT", None)
            self._base_env = env_entries(base)
            # GNU sets PARALLEL_JOBSLOT for every job (a script the command runs may read
            # it), so each job's slot must be known before it starts: none is handed over
            # ahead of a free slot
            uses_slot = True
        self._env_slot = uses_slot
        self._window = window
        if uses_slot or window is not None:
            ahead = False
        held_max = max(2, min((AHEAD_PER_SLOT - 1) * self.jobs, _AHEAD_MAX))
        self._max_in_flight = self.jobs + held_max if ahead else self.jobs
        if store is not None:
            store.stop_on_error(lambda: self.stop("store"))

    # -- control -------------------------------------------------------------------------

    def stop(self, reason=None):
        """Stop starting tasks and kill every running tree now (safe from a signal handler
        and from another thread, such as the store's writer).

        ``reason``: a signal number, "pipe" (our stdout closed), "start" (the first tasks
        all could not start), "unstartable" (no task can start on this host) or "store"
        (the store failed); it decides
        :attr:`exit_status`."""
        if self._stop_reason is None:
            self._stop_reason = reason if reason is not None else "stop"
        self._gentle = False
        # Killing here, not only in the loop, ends a wait in q.get_many() at once.
        self._kill_all()
        self._wake()

    def interrupt(self, reason=None):
        """Stop starting tasks and end the running ones gently (safe from a signal handler).

        The first call sends every running tree SIGTERM and SIGKILL after the kill grace,
        as a deadline does, so that tasks can clean up (GNU parallel's --termseq); tasks
        still held by the engine never start. A second call kills at once (:meth:`stop`).

        Returns:
            True for the first call (gentle), False when it killed at once.
        """
        if self._stop_reason is not None and self._stop_reason != "halt":
            self.stop(reason)
            return False
        self._stop_reason = reason if reason is not None else "stop"
        self._gentle = True
        self._kill_all(gentle=True)
        self._wake()
        return True

    def _wake(self):
        try:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full: a wake-up is already pending

    @property
    def kill_grace(self):
        """Seconds between SIGTERM and SIGKILL when tasks are ended gently."""
        return self._spawn_kw["kill_grace"]

    def _kill_all(self, gentle=False):
        """Kill every task in flight (or, *gentle*, SIGTERM the running ones and SIGKILL
        them after the kill grace); return their jobs.

        Newest first: the engine starts held tasks in submission order, so the held ones
        are cancelled before a killed running one frees its slot for them. The copies are
        made by single C calls, so a signal handler (or another thread) interrupting the
        loop sees consistent containers.
        """
        held = list(reversed(self._held))
        running = list(reversed(self.running.values()))
        # job.task is read once: from a handler or another thread, the loop may finish a
        # job (and clear its task) between the copy above and here
        for job in held:
            task = job.task
            if task is not None:
                task.kill()  # never started: nothing to clean up
        for job in running:
            task = job.task
            if task is None:
                continue
            if not gentle:
                task.kill()
            elif job.kill_reason is None:
                # One SIGTERM per task: the run loop passes here again after the signal
                # handler did, and a shell whose trap is running when a second SIGTERM
                # comes runs its trap (its cleanup) again.
                job.kill_reason = "stop"
                task.terminate()
        return held + running

    @property
    def stopped_by(self):
        return self._stop_reason

    @property
    def exit_status(self) -> int:
        """GNU parallel's exit status for the batch so far: 0 if every task succeeded,
        else the number that failed (101 for more than 100); a ``--halt`` policy's own;
        130/143 when stopped by SIGINT/SIGTERM, 141 when our stdout closed, 255 when it
        was stopped because no task could start."""
        return self.exit_status_with()

    def exit_status_with(self, more_failed=0) -> int:
        """:attr:`exit_status`, counting *more_failed* tasks as failed besides those the
        batch saw fail (``pardo run``: a task whose output was cut at --max-output)."""
        by_stop = _EXIT_BY_STOP.get(self._stop_reason)
        if by_stop is not None:
            return by_stop
        if self.halt_exit is not None:
            return self.halt_exit
        failed = self.failed + more_failed
        return failed if failed <= 100 else 101

    # -- commands ------------------------------------------------------------------------

    def _command_args(self, job, slot):
        if job.argv is not None:
            return job.argv
        argv = self.template.argv(job.args, job.seq, slot)
        if argv is not None:
            return [encode(a) for a in argv]
        if job.shell_line is not None and self.template.has_perl:
            line = job.shell_line  # a retry: GNU evaluates perl code once per job
        else:
            line = self.template.command(job.args, job.seq, slot)
            job.shell_line = line
            job.skipped = self.template.skipped
        if job.skipped:
            return [b"true"]  # GNU runs `true` for a job whose perl code called skip()
        return [self._shell, b"-c", shell_line(encode(line))]

    def command_line(self, job):
        """The shell command line of a job, as GNU parallel would show it."""
        if job.shell_line is None:
            if job.argv is not None:
                job.shell_line = job.argv[-1].decode("utf-8", "surrogateescape")
            else:
                job.shell_line = self.template.command(job.args, job.seq, job.slot)
        return job.shell_line

    def dry_run(self):
        """The command line of every job, running none (``--dry-run``; ``{%}`` is 1). A job
        whose perl code calls ``skip()`` counts as failed, as in GNU parallel."""
        for job in self._jobs_iter:
            job.slot = 1
            line = self.command_line(job)
            if self.template.has_perl and self.template.skipped:
                self.failed += 1
            yield line

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

    # -- job slots -----------------------------------------------------------------------

    def _start(self, job, q):
        """Hand a job to the engine: in a free job slot, or held until one frees (slot 0)."""
        slot = job.slot = self._take_slot()
        job.attempts += 1
        job.kill_reason = None
        cpus = None if self._pin is None else self._pin[slot]
        if self._pct is not None:
            job.started = self._clock()  # exact: with N% deadlines nothing is held
        argv = self._command_args(job, slot)
        exe = self._executable(argv[0])
        env_list = None
        if self._base_env is not None:
            env_list = self._base_env + [b"PARALLEL_SEQ=%d" % job.seq]
            if self._env_slot:
                env_list.append(b"PARALLEL_JOBSLOT=%d" % slot)
        stdin, job.stdin = job.stdin, None
        try:
            task = self._spawn(job, q, argv, exe, cpus, env_list, stdin)
        finally:
            if stdin is not None:
                os.close(stdin)  # the engine has its own copy
        if slot:
            self.running[task] = job
        else:
            self._held.append(job)
        self.started += 1

    def _spawn(self, job, q, argv, exe, cpus, env_list, stdin):
        more = {} if stdin is None else {"stdin": stdin}  # (an engine elsewhere has none)
        if self._spool is not None:
            job.spool = self._spool.take()
            try:
                task = job.task = self._spawner(argv, q, job, exe, cpus, *job.spool,
                                                env_list=env_list, input=job.input,
                                                **more)
            except BaseException:
                self._spool.discard(job.spool)
                job.spool = None
                raise
        elif self._line_sink is None:
            task = job.task = self._spawner(argv, q, job, exe, cpus, env_list=env_list,
                                            input=job.input, **more)
        else:
            kw = dict(self._spawn_kw, stdout=None, stderr=None)
            if env_list is not None:
                kw["env"] = dict(e.split(b"=", 1) for e in env_list)
            (r1, w1), (r2, w2) = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
            try:
                job.task = Spawner(**dict(kw, stdout=w1, stderr=w2))(
                    argv, q, job, exe, cpus, input=job.input, stdin=stdin)
            finally:
                os.close(w1)  # the engine holds its own copies now
                os.close(w2)
            job.pipes = {r1: [1, bytearray()], r2: [2, bytearray()]}
            for fd in job.pipes:
                self._sel.register(fd, selectors.EVENT_READ, job)
            task = job.task
        return task

    def _take_slot(self):
        """A free job slot, or 0 when every slot is taken. GNU parallel's order: the slot
        freed first (a FIFO), and a new number only when none was freed."""
        if self._free:
            return self._free.popleft()
        if self._slots_made < self.jobs:
            self._slots_made += 1
            return self._slots_made
        return 0

    def _release(self, slot):
        """A task that held job slot ``slot`` is over: the engine has started the oldest
        held task in its place (or will start the next one submitted)."""
        if self._held:
            job = self._held.popleft()
            job.slot = slot
            self.running[job.task] = job
        else:
            self._free.append(slot)

    def _claim_slot(self, job):
        """Give a job slot to a held job that turned out to have run already.

        The engine started it ahead of an older held task (a submission and an exit in
        the same engine round); take the slot of the task slotted last, most likely the
        one still waiting, and hold that one instead.
        """
        self._held.remove(job)
        slot = self._take_slot()
        if slot:
            job.slot = slot
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
            # Search only the new data and grow the pending partial line in place: a long
            # line without a newline costs linear time, not a copy of all of it per read.
            cut = data.rfind(b"\n") + 1
            if cut:
                pending = entry[1]
                if pending:
                    # The sink writes it at once and keeps nothing: hand it the buffer
                    # itself (a copy would hold a long line twice).
                    pending += data[:cut]
                    self._line_sink(job, entry[0], pending)
                else:
                    self._line_sink(job, entry[0], data[:cut])
                entry[1] = bytearray(data[cut:])
            else:
                entry[1] += data
            return
        if entry[1]:
            self._line_sink(job, entry[0], entry[1])
        self._sel.unregister(fd)
        os.close(fd)
        del job.pipes[fd]

    # -- finished tasks ------------------------------------------------------------------

    def _enforce_fraction(self, now):
        """Terminate tasks past the N% deadline; return seconds until the next could be."""
        nxt = None
        for job in self.running.values():
            if job.kill_reason is not None:
                continue
            left = self._pct.time_left(job.started, now)
            if left is None:
                return None
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
                    self.halt_exit = 128 + result.signal if result.signal else 1
            elif h.count is not None:
                # GNU: the number of failed tasks, and 101 when none failed (done=N: GNU's
                # min() skips the count it never set, leaving 101)
                self.halt_exit = min(self.failed, 101) if self.failed else 101
            else:
                # GNU: the percentage of failed tasks, rounded up
                self.halt_exit = -(-100 * self.failed // (self.total or self.finished or 1))
            self._stop_reason = "halt"
            if h.when == "now":
                # GNU parallel ends the running jobs with its --termseq, TERM first
                self._gentle = True
                self._kill_all(gentle=True)

    def _finish(self, task, q):
        """Handle one completed task; return its job if that job is done for good.

        Frees the task's job slot, or starts the job again when it is to be retried.
        """
        job = task.tag
        r = task.result
        if job.spool is not None:
            fds, job.spool = job.spool, None
            self._spool.collect(r, fds)
            if r.spool:
                self._spool_open.add(r)
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
            r.deadline = self._pct.limit()
        self._release(job.slot)
        if (r.status != Status.OK and job.attempts < self.retries and self._stop_reason is None
                and r.status != Status.CANCELLED):
            r.slot = job.slot
            self._drop(job.last)
            job.last = r
            if self._store is not None:
                self._store.attempt(job, r, self.command_line(job), final=False,
                                    cpus=None if self._pin is None else self._pin[job.slot],
                                    files=self._spooled_for_store(r))
            self._start(job, q)  # without anything held: the slot just released
            return None
        return self._done(job, r)

    def _spooled_for_store(self, r):
        """The store's own fds of a result's spooled streams (see spool.py), or None."""
        return self._spool.hand_over(r) if self._spool is not None else None

    def _drop(self, r):
        """Close the files of a result that will never be yielded (again)."""
        if r is not None and getattr(r, "spool", None):
            self._spool_open.discard(r)
            self._spool.release(r)

    def _done(self, job, r):
        """Count (and record in the store) the final result of a job; return the job."""
        job.task = None
        if job.last is not r:
            self._drop(job.last)
        job.last = None
        job.input = None  # a --pipe block is not needed any more
        if job.skipped and r.status == Status.OK:
            r.status, r.returncode = Status.FAILED, -2  # GNU's Exitval for skip()
        job.result = r
        r.seq, r.slot, r.inputs, r.attempts = job.seq, job.slot, job.args, job.attempts
        r.job = job
        self.finished += 1
        st = r.status.value
        self.by_status[st] = self.by_status.get(st, 0) + 1
        if r.status == Status.OK:
            self.succeeded += 1
            if self._pct is not None:
                self._pct.observe(r.duration)
        else:
            self.failed += 1
            if r.status == Status.CANCELLED:
                self.interrupted += 1
        if self._results_dir is not None:
            write_results(self._results_dir, job, r, *self._results_names)
        if self._store is not None:
            # (once per task: the command line and the spooled files without the calls
            # of command_line() and _spooled_for_store() when there is nothing to do)
            line = job.shell_line
            spool = self._spool
            self._store.attempt(job, r, self.command_line(job) if line is None else line,
                                final=True,
                                cpus=None if self._pin is None else self._pin[job.slot],
                                files=None if spool is None or not getattr(r, "spool", None)
                                else spool.hand_over(r))
        self._halt_check(r)
        return job

    def _record(self, joblog, r):
        """A result has been handed out: its joblog row goes to disk, and the consumer is
        done with its spooled files."""
        if joblog is not None:
            # Receive: the bytes of output the job wrote on stdout, as GNU's
            joblog.record(r, self.command_line(r.job), _spool.size_of(r, 1))
        self._drop(r)

    # -- the loop -------------------------------------------------------------------------

    def __iter__(self):
        joblog = None
        if self._joblog_path is not None:
            from .._store import JobLog

            joblog = JobLog(self._joblog_path, append=self._resume is not None)
        try:
            yield from self._loop(joblog)
        finally:
            if joblog is not None:
                joblog.close()

    def _loop(self, joblog):
        jobs = self.jobs
        limit = self._max_in_flight
        make_queue = ResultQueue if self._engine is None else self._engine.queue
        q = make_queue(max_running=jobs) if limit > jobs else make_queue()
        # A selector only when there is more than the queue to watch: the queue's fd costs
        # the engine two system calls per task, and a select round costs one more wake-up.
        sel = None
        if self._input_may_block or self._line_sink is not None or self.delay:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            sel = self._sel = selectors.DefaultSelector()
            qfd = q.fileno()
            sel.register(qfd, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
        if self._spool_wanted:
            # files reused only where a finished task's whole tree is known to be gone
            self._spool = _spool.SpoolFiles(isolation() != "pgroup", keep=4 * (jobs + 2))
        self._free.clear()
        self._slots_made = 0
        running, held = self.running, self._held
        keep_order = self.keep_order
        clock = self._clock
        order = deque()
        if self._input_may_block:
            source = Prefetch(self._jobs_iter, self._wake_w,
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
                        now = clock()
                        if now < next_start:
                            wait = next_start - now
                            break
                        next_start = now + self.delay
                    job = next(source, None)
                    if job is None:
                        exhausted = True
                        break
                    if job is NOT_YET:
                        break  # the prefetch thread wakes us when the next one is read
                    self._start(job, q)
                    if keep_order:
                        order.append(job)
                if self._stop_reason is not None and not killed and self._stop_reason != "halt":
                    # again, here: a task may have started while the handler ran
                    killed = True
                    self._kill_all(gentle=self._gentle)
                if not (running or held) and (exhausted or self._stop_reason is not None):
                    break
                if self._pct is not None:
                    nxt = self._enforce_fraction(clock())
                    if nxt is not None:
                        wait = nxt if wait is None else min(wait, nxt)
                if sel is None:
                    # Something is in flight here (only a delay or a prefetch, which have a
                    # selector, can leave the loop waiting with nothing in flight); stop()
                    # kills what is in flight, which ends this wait too.
                    # With tasks held in the engine, wake once per few results: the
                    # engine keeps every job slot busy meanwhile.
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
                        try:
                            yield job.result
                        finally:
                            self._record(joblog, job.result)
                while order and order[0].result is not None:
                    r = order.popleft().result
                    if r is not _NEVER_RAN:
                        try:
                            yield r
                        finally:
                            self._record(joblog, r)
        finally:
            # Reached on normal end, on an exception in the consumer, and on close(): no
            # task may outlive the batch.
            left = self._kill_all()
            for job in left:
                try:
                    job.task.wait()
                except Exception:
                    pass
            if isinstance(source, Prefetch):
                source.close()
            for job in left:
                for fd in job.pipes or ():
                    os.close(fd)
            running.clear()
            held.clear()
            for r in list(self._spool_open):
                self._drop(r)
            for job in left:
                if job.spool is not None:
                    self._spool.discard(job.spool)
                    job.spool = None
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            if sel is not None:
                sel.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
