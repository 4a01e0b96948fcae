"""``pardo run``: GNU parallel's command line over the batch runner (:class:`pardo._batch.Batch`).

This module parses and renders only. Parsing is hand-written because GNU parallel's grammar
is not argparse's: options stop at the first word that is not an option (the command), and
``:::``, ``:::+``, ``::::``, ``::::+`` separate input sources after the command.
"""

from __future__ import annotations

import difflib
import os
import signal
import sys

from .._errors import PardoError, UsageError

__all__ = ["main"]

USAGE = """\
usage: pardo run [options] [COMMAND [ARGS...]] [::: VALUES...] [:::+ VALUES...] [:::: FILES...]

Runs COMMAND once per input, in parallel, like GNU parallel (its manual describes the shared
options). Inputs come from ::: values, :::: files, -a FILE, or stdin.

options shared with GNU parallel:
  -j, --jobs N|N%|+N|-N    parallel slots (default: the CPUs this process may use)
  --timeout SECS|N%        per-task deadline; N% = of the median runtime of successful tasks
  --termseq SEQ            e.g. TERM,2000,KILL,25: its first pause is pardo's kill grace
  --retries N              run a failing task up to N times
  --halt WHEN,WHY=N[%]     now|soon, fail|success|done, e.g. now,fail=1
  -k, --keep-order         print output in input order
  --group | --ungroup/-u | --line-buffer
  --tag, --tagstring STR   prefix output lines with the input (or STR)
  -v                       print each command before its output
  --results DIR            save output under DIR/1/<value>/.../{seq,stdout,stderr}
  --joblog FILE            GNU's TSV joblog; --resume, --resume-failed, --retry-failed
  --dry-run                print the commands, run nothing
  --delay SECS, --nice N
  --bar, --eta, --progress live progress on stderr (off a terminal: GNU's plain lines)
  -a, --arg-file FILE      read inputs from FILE (like :::: FILE)
  --colsep REGEX           split input lines into columns {1} {2} ...
  -N N                     N inputs per command; -n N without context replace
  -I STR                   use STR instead of {}
  -0, --null, -d, --delimiter DELIM   input record separator
  --link                   link all input sources (like :::+)
  -r, --no-run-if-empty    skip blank input lines
pardo's own:
  --pin                    run slot i on its own CPU
  --memory-limit SIZE      per-task memory limit (e.g. 512M)
  --isolation RUNG         cgroup | shepherd | pgroup
  --kill-grace SECS        SIGTERM -> SIGKILL pause for deadlines (default 2)
  --max-output SIZE        --group mode prints at most SIZE per stream of a task (default
                           256M); a cut task counts as failed
  --summary / --no-summary end-of-run summary on stderr (default: on a terminal)

exit status: 0 all tasks succeeded; 1-100 that many failed; 101 more than 100 failed;
--halt: the failing task's exit status; 130/143 interrupted by SIGINT/SIGTERM; 141 stdout
closed (SIGPIPE); 255 error.
"""

# name -> (dest, takes_value)
_OPTIONS = {}


def _opt(dest, *names, value=False, multi=False):
    for n in names:
        _OPTIONS[n] = (dest, value, multi)


_opt("jobs", "-j", "-P", "--jobs", "--max-procs", value=True)
_opt("timeout", "--timeout", value=True)
_opt("termseq", "--termseq", value=True)
_opt("kill_grace", "--kill-grace", value=True)
_opt("retries", "--retries", value=True)
_opt("halt", "--halt", "--halt-on-error", value=True)
_opt("keep_order", "-k", "--keep-order")
_opt("group", "--group")
_opt("ungroup", "-u", "--ungroup")
_opt("line_buffer", "--line-buffer", "--lb")
_opt("tag", "--tag")
_opt("tagstring", "--tagstring", value=True)
_opt("verbose", "-v", "--verbose")
_opt("results", "--results", "--res", value=True)
_opt("joblog", "--joblog", "--jl", value=True)
_opt("resume", "--resume")
_opt("resume_failed", "--resume-failed")
_opt("retry_failed", "--retry-failed")
_opt("dry_run", "--dry-run", "--dryrun")
_opt("delay", "--delay", value=True)
_opt("nice", "--nice", value=True)
_opt("bar", "--bar", "--eta", "--progress")
_opt("arg_file", "-a", "--arg-file", "--arg_file", value=True, multi=True)
_opt("colsep", "--colsep", "-C", value=True)
_opt("max_replace", "-N", "--max-replace-args", value=True)
_opt("max_args", "-n", "--max-args", value=True)
_opt("replace", "-I", "--replace", value=True)
_opt("null", "-0", "--null")
_opt("delimiter", "-d", "--delimiter", value=True)
_opt("link", "--link", "--xapply")
_opt("no_empty", "-r", "--no-run-if-empty")
_opt("pin", "--pin")
_opt("memory_limit", "--memory-limit", value=True)
_opt("isolation", "--isolation", value=True)
_opt("max_output", "--max-output", value=True)
_opt("summary", "--summary")
_opt("no_summary", "--no-summary")
_opt("will_cite", "--will-cite", "--no-notice")
_opt("help", "-h", "--help")
_opt("version", "--version", "-V")

_SEPARATORS = (":::", ":::+", "::::", "::::+")


def _closest(name):
    m = difflib.get_close_matches(name, list(_OPTIONS), n=1, cutoff=0.6)
    return f"; did you mean {m[0]}?" if m else "; see pardo run --help"


def parse(argv):
    """Split argv into (options dict, command words, sources). Raises UsageError."""
    from .._batch import Source

    opts = {"arg_file": []}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if a in _SEPARATORS or not a.startswith("-") or a == "-":
            break
        name, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
        if name not in _OPTIONS and not a.startswith("--") and len(a) > 2 and a[:2] in _OPTIONS:
            name, eq, val = a[:2], "=", a[2:]  # -j4, -N2
        if name not in _OPTIONS:
            raise UsageError(f"unknown option {name}{_closest(name)}")
        dest, takes, multi = _OPTIONS[name]
        if takes:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"option {name} needs a value")
                val = argv[i]
        elif eq:
            raise UsageError(f"option {name} takes no value")
        else:
            val = True
        if multi:
            opts[dest].append(val)
        else:
            opts[dest] = val
        i += 1
    command = []
    while i < len(argv) and argv[i] not in _SEPARATORS:
        command.append(argv[i])
        i += 1
    sources = []
    while i < len(argv):
        sep = argv[i]
        i += 1
        vals = []
        while i < len(argv) and argv[i] not in _SEPARATORS:
            vals.append(argv[i])
            i += 1
        linked = sep.endswith("+")
        if sep.startswith("::::"):
            if not vals:
                raise UsageError(f"{sep} needs at least one file")
            for k, path in enumerate(vals):
                sources.append(Source(path=path, linked=linked and k == 0))
        else:
            if not vals:
                raise UsageError(f"{sep} needs at least one value")
            sources.append(Source(values=vals, linked=linked))
    for path in opts["arg_file"]:
        sources.append(Source(path=path))
    if opts.get("link"):
        for s in sources[1:]:
            s.linked = True
    return opts, command, sources


def _int(opts, key, default=None, minimum=0):
    v = opts.get(key)
    if v is None:
        return default
    try:
        n = int(v)
    except ValueError:
        raise UsageError(f"{key.replace('_', '-')}: {v!r} is not a whole number") from None
    if n < minimum:
        raise UsageError(f"{key.replace('_', '-')}: must be at least {minimum}")
    return n


def _float(opts, key, default=None):
    v = opts.get(key)
    if v is None:
        return default
    try:
        return float(v)
    except ValueError:
        raise UsageError(f"{key.replace('_', '-')}: {v!r} is not a number") from None


def _size(opts, key, default, minimum):
    v = opts.get(key, default)
    if v is None:
        return None
    from .._run import parse_size

    return parse_size(v, "--" + key.replace("_", "-"), minimum=minimum)


def _termseq_grace(seq):
    # GNU's --termseq is SIG,ms,SIG,ms,...; pardo sends SIGTERM then SIGKILL, so the first
    # pause is the grace. A sequence that does not start with TERM is not representable.
    parts = seq.split(",")
    if len(parts) < 2 or parts[0].upper().removeprefix("SIG") != "TERM":
        raise UsageError("--termseq: pardo supports TERM,<ms>[,...,KILL,<ms>]; use --kill-grace")
    try:
        return int(parts[1]) / 1000
    except ValueError:
        raise UsageError(f"--termseq: {parts[1]!r} is not milliseconds") from None


def main(argv: list[str]) -> int:
    """Run ``pardo run`` with *argv* (the words after ``run``); return the exit status."""
    try:
        return _main(argv)
    except PardoError as e:  # a user error (option, template, input, isolation): one line
        print(f"pardo run: {e}", file=sys.stderr)
        return 255
    except KeyboardInterrupt:  # Ctrl-C before the batch loop took over the signal
        return 130
    except OSError as e:  # the environment said no (a joblog in a missing directory...)
        where = f" {e.filename!r}" if e.filename else ""
        print(f"pardo run: {e.strerror or e}{where}", file=sys.stderr)
        return 255
    # Anything else is a bug in pardo: it goes up as a traceback.


def _main(argv):
    opts, command, sources = parse(argv)
    if opts.get("help"):
        sys.stdout.write(USAGE)
        return 0
    if opts.get("version"):
        from .. import __version__

        print(f"pardo {__version__}")
        return 0
    from .._batch import (
        RESUME_MODES,
        Batch,
        Source,
        Template,
        arg_groups,
        compile_colsep,
        count_jobs,
    )
    from .._run import INHERIT
    from .views import Out, View

    if opts.get("isolation"):
        os.environ["PARDO_ISOLATION"] = opts["isolation"]
    if opts.get("colsep") is not None:
        compile_colsep(opts["colsep"])  # before any input is read
    n_replace = _int(opts, "max_replace")
    n_args = _int(opts, "max_args")
    per_job = n_replace if n_replace is not None else n_args
    template = Template(command, replace=opts.get("replace") or "{}",
                        context=n_replace is not None)
    resume = next((mode for mode in RESUME_MODES if opts.get(mode.replace("-", "_"))), None)
    if resume is not None and not opts.get("joblog"):
        raise UsageError("--resume/--resume-failed/--retry-failed need --joblog FILE")
    if not sources and resume != "retry-failed":
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError("no input: give ::: values, :::: files, -a FILE, or pipe stdin")
        if not command and os.isatty(sys.stdin.fileno()):
            raise UsageError("missing command: pardo run COMMAND ::: VALUES (see --help)")
        sources = [Source(path="-")]
    n_sources = len(sources) * (per_job or 1)
    if (template.max_position > n_sources and opts.get("colsep") is None
            and resume != "retry-failed"):
        raise UsageError(
            f"{{{template.max_position}}} refers to input {template.max_position}, but there "
            f"{'is only 1' if n_sources == 1 else f'are only {n_sources}'}; add an input "
            "source or use --colsep")
    for s in sources:
        s.open(stdin=sys.stdin.buffer if s.path == "-" else None)
    if opts.get("null"):
        delim = b"\0"
    elif opts.get("delimiter") is not None:
        delim = opts["delimiter"].encode().decode("unicode_escape").encode("latin-1")
    else:
        delim = b"\n"
    skip_empty = bool(opts.get("no_empty"))
    groups = arg_groups(sources, delimiter=delim, colsep=opts.get("colsep"), max_args=per_job,
                        skip_empty=skip_empty)
    total = None
    if not skip_empty:
        # --bar needs a total: then the records of input files are counted ahead (GNU
        # reads them all first for --bar/--eta; counting keeps none of them)
        total = count_jobs(sources, per_job,
                           delim if opts.get("bar") and resume is None else None)
    kill_grace = _float(opts, "kill_grace", 2.0)
    if opts.get("termseq"):
        kill_grace = _termseq_grace(opts["termseq"])
    view = View(opts, max_output=_size(opts, "max_output", "256M", minimum=0))
    batch = Batch(
        template, groups, jobs=opts.get("jobs"), timeout=opts.get("timeout"),
        kill_grace=kill_grace, retries=_int(opts, "retries", 1), halt=opts.get("halt"),
        keep_order=bool(opts.get("keep_order")), pin=bool(opts.get("pin")),
        delay=_float(opts, "delay", 0.0), nice=_int(opts, "nice", None, minimum=-20),
        memory_limit=_size(opts, "memory_limit", None, minimum=1),
        spool=view.mode == "group",
        stdout=INHERIT if view.mode == "ungroup" else None,
        stderr=INHERIT if view.mode == "ungroup" else None,
        shell=os.environ.get("PARDO_SHELL", "/bin/sh"), results=opts.get("results"),
        joblog=opts.get("joblog"), resume=resume,
        line_sink=view.line if view.mode == "line" else None,
        input_may_block=any(s.may_block() for s in sources),
        total=total,
    )
    if opts.get("dry_run"):
        out = Out(1)
        for line in batch.dry_run():
            out.write(line.encode("utf-8", "surrogateescape") + b"\n")
            if out.broken:
                break
        return 0
    return _execute(batch, view, opts)


def _execute(batch, view, opts):
    from .._result import Status
    from .views import PlainProgress, Progress, Summary

    out, err = view.out, view.err
    tty = os.isatty(2)
    want_summary = opts.get("summary") or (tty and not opts.get("no_summary"))
    summary = Summary() if want_summary else None
    needs_line = view.verbose or summary is not None

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if batch.interrupt(signum):
            n = len(batch.running)
            err.write((f"pardo: {name}: starting no more tasks; sent SIGTERM to {n} running "
                       f"task{'s' if n != 1 else ''}, SIGKILL after {batch.kill_grace:g} s "
                       f"({'Ctrl-C' if signum == signal.SIGINT else name} again: kill now)\n")
                      .encode())
        else:
            err.write(f"pardo: {name} again: killing the running tasks now\n".encode())

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    running = _watch_stdout(batch)
    start_errors = _StartErrors(batch)
    cut_ok = 0  # tasks that succeeded but whose output was cut at --max-output
    progress = plain = None
    if tty and (opts.get("bar") or not os.isatty(1)):
        progress = Progress(batch, batch.total)
    elif opts.get("bar"):
        plain = PlainProgress(batch, batch.total, err.write)
    try:
        if progress is not None:
            progress.__enter__()
        for r in batch:
            line = batch.command_line(r.job) if needs_line else None
            if r.status == Status.ERROR:
                if start_errors.add(r):
                    err.write(f"pardo: {r.error}\n".encode("utf-8", "surrogateescape"))
                if start_errors.hopeless():
                    batch.stop("start")
            elif r.status == Status.TIMEOUT:
                err.write(b"pardo: task " + str(r.seq).encode() + b" timed out: " +
                          batch.command_line(r.job).encode("utf-8", "surrogateescape") + b"\n")
            if view.mode == "group" and r.status != Status.CANCELLED:
                if view.grouped(r, line) and r.status == Status.OK:
                    cut_ok += 1  # output lost: not a success (GNU has no limit to cut at)
            if summary is not None:
                summary.add(r, line)
            if plain is not None:
                plain.update()
            if out.broken:
                batch.stop("pipe")
    finally:
        running.clear()  # a reader leaving after the end changes nothing
        if progress is not None:
            progress.__exit__(None, None, None)
        for s, h in old.items():
            signal.signal(s, h)
    err.write(start_errors.report().encode("utf-8", "surrogateescape"))
    if summary is not None and batch.finished:
        err.write(summary.render().encode("utf-8", "surrogateescape"))
    hr = batch.halt_result
    if batch.stopped_by == "halt" and hr is not None:
        # GNU parallel says which job made it stop; so do we, on one line
        err.write((f"pardo: --halt {opts.get('halt')}: stopped after task {hr.seq} "
                   f"{hr.describe()}: {batch.command_line(hr.job)}\n")
                  .encode("utf-8", "surrogateescape"))
    if batch.stopped_by in (signal.SIGINT, signal.SIGTERM):
        err.write(_interrupt_report(batch).encode())
    # a task whose output was cut is not a success (GNU has no limit to cut at)
    return batch.exit_status_with(cut_ok)


def _interrupt_report(batch):
    """One line after an interrupt: how many tasks finished, were interrupted, never ran."""
    done = batch.finished - batch.interrupted
    total = batch.total
    if total is not None:
        rest = f"{max(0, total - batch.finished)} never started"
    else:
        rest = "the rest of the input never started"
    return (f"pardo: interrupted: {done} task{'s' if done != 1 else ''} finished, "
            f"{batch.interrupted} interrupted, {rest}\n")


def _watch_stdout(batch):
    """Stop the run as soon as whoever reads our stdout goes away (``| head``); return an
    Event to clear once the run is over.

    A write would tell us too, but only when there is something to write: in --line-buffer
    and --ungroup modes, or with a long task in --group mode, that may be never. A pipe's
    (or socket's) write end reports POLLERR/POLLHUP once the last reader is gone, so a
    daemon thread waits for that and no task start pays for the check.
    """
    import select
    import stat
    import threading

    running = threading.Event()
    running.set()
    try:
        mode = os.fstat(1).st_mode
    except OSError:
        return running
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return running  # a terminal or a file: no reader to lose

    def watch():
        p = select.poll()
        p.register(1, 0)  # no events asked for: error and hang-up are always reported
        while not p.poll():
            pass
        if running.is_set():
            batch.stop("pipe")

    threading.Thread(target=watch, daemon=True, name="pardo-stdout-watch").start()
    return running


class _StartErrors:
    """Says each reason a task could not start once (a mistyped program would otherwise
    print the same line for every input), and notices when nothing can start at all."""

    # This many tasks in a row, from the first, that could not start for one reason:
    # the rest will not either (the same program, the same PATH).
    HOPELESS = 10

    def __init__(self, batch):
        self._batch = batch
        self._count: dict[str, int] = {}
        self._all_same = True  # every task so far could not start, for one reason
        self._stopped_after = 0

    def add(self, result) -> bool:
        """Count *result* (status "error"); True when its reason is new."""
        n = self._count.get(result.error, 0)
        self._count[result.error] = n + 1
        if self._all_same and (len(self._count) > 1 or self._batch.finished > n + 1):
            self._all_same = False
        return n == 0

    def hopeless(self) -> bool:
        if not self._all_same or self._batch.finished < self.HOPELESS:
            return False
        self._all_same = False  # say it once
        self._stopped_after = self._batch.finished
        return True

    def report(self) -> str:
        """Lines for the end of the run: how many more failed for each reason, and why the
        run stopped early if it did."""
        lines = []
        for reason, n in self._count.items():
            if n > 1:
                lines.append(f"pardo: {n - 1} more task{'s' if n > 2 else ''} could not start: "
                             f"{reason}\n")
        if self._batch.stopped_by == "start":
            lines.append(f"pardo: stopped: the first {self._stopped_after} tasks all could "
                         "not start for the same reason; fix the command and run again\n")
        return "".join(lines)
