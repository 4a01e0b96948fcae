"""``pardo run``: GNU parallel's command line over the batch runner (:class:`pardo._batch.Batch`).

This module parses and renders only. Parsing is hand-written because GNU parallel's grammar
is not argparse's: options stop at the first word that is not an option (the command), and
``:::``, ``:::+``, ``::::``, ``::::+`` separate input sources after the command.
"""

from __future__ import annotations

import os
import re
import signal
import sys

from .._errors import PardoError, UsageError
from .run_inputs import (
    apply_header,
    duration,
    is_results_file,
    pipe_blocks,
    pipe_input,
    profile_words,
    split_value,
)
from .run_options import parse_options

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
  --halt WHEN,WHY=N[%]     now|soon, fail|success|done, e.g. now,fail=1 (also 1, 2, -1, -2, N%)
  -k, --keep-order         print output in input order
  --group | --ungroup/-u | --line-buffer
  --tag, --tagstring STR   prefix output lines with the input (or STR)
  -v                       print each command before its output (on stdout)
  -t, --verbose            print each command on stderr
  --results DIR            save output under DIR/1/<value>/.../{seq,stdout,stderr}
  --results F.csv|F.tsv|F.json   one file of records (joblog columns, values, output)
  --files, --tmpdir DIR    write each job's output to a file in DIR (default $TMPDIR, /tmp);
                           print the file's name instead
  --joblog FILE            GNU's TSV joblog; --resume, --resume-failed, --retry-failed
  --dry-run                print the commands, run nothing
  --delay SECS, --nice N   (durations may end in s, m, h, d)
  --bar, --eta, --progress live progress on stderr (off a terminal: GNU's plain lines)
  -a, --arg-file FILE      read inputs from FILE (like :::: FILE); these come first
  --arg-sep SEP, --arg-file-sep SEP   use SEP instead of ::: / ::::
  --colsep REGEX           split input lines into columns {1} {2} ... (trims blanks)
  --trim n|l|r|lr          strip white space from the left/right of each input
  --header :               the first input line names the columns: {name}
  -N N                     N inputs per command; -n N without context replace
  -L N, -l [N], --max-lines [N]   N input lines per command (as -N / -n)
  -X, -m, --xargs          as many inputs per command as fit (-X repeats the word around
                           {}); -X and -m spread the last ones over the job slots
  -s, --max-chars N        shorter command lines than GNU's limit; --show-limits prints it
  -I STR, -i [STR]         use STR instead of {}
  --er/--bnr/--dnr/--bner/--seqreplace/--slotreplace STR
                           STR stands for {.} {/} {//} {/.} {#} {%}
  {= perl =}, --rpl 'TAG perl'   GNU's perl replacement strings (one perl process);
                           --parens ,,,, writes them ,, perl ,,
  --plus                   also {+/} {+.} {..} {+..} {...} {/..} {##} and bash's {:-x} {:2}
                           {:2:3} {#pre} {%suf} {/old/new} {^a} {,A} ...
  -q, --quote              quote every word of the command (no shell interpretation)
  -0, --null, -d, --delimiter DELIM   input record separator (also splits ::: values)
  -E, --eof STR            a value equal to STR ends its input source
  --link                   link all input sources (like :::+)
  -r, --no-run-if-empty    skip blank input lines
  --pipe                   cut stdin into blocks of whole records, one block per job's stdin
  --pipepart -a FILE       the same over FILE
  --block SIZE             block size (default 1M; k=1000, K=1024); longer records grow it
  --recend STR, --recstart STR, --regexp   what ends/starts a record (default: a newline)
  --header N|REGEX         with --pipe: the first N lines (or the match) start every block
  --round-robin            with --pipe: -j jobs whose stdin stays open take the blocks
                           in turn (each block whole, to a job that has room)
  -J, --profile NAME       read options from ~/.parallel/NAME ($PARALLEL_HOME); $PARALLEL too
  --env NAME               accepted: every job inherits pardo's environment
Every job's environment has PARALLEL_SEQ, PARALLEL_PID and PARALLEL_JOBSLOT, as in GNU.
Long options may be abbreviated as in GNU parallel (--joblo); short ones
bundle (-kvj2). Remote execution (-S, --sshlogin, ...) is not pardo's: see --mpi.
pardo's own:
  --pin                    run slot i on its own CPU
  --memory-limit SIZE      per-task memory limit (e.g. 512M)
  --isolation RUNG         cgroup | shepherd | pgroup
  --kill-grace SECS        SIGTERM -> SIGKILL pause for deadlines (default 2)
  --max-output SIZE        --group mode prints at most SIZE per stream of a task (default
                           256M); a cut task counts as failed
  --summary / --no-summary end-of-run summary on stderr (default: on a terminal)
  --store FILE             record the run and every task attempt in a job store (SQLite);
                           --resume, --resume-failed, --retry-failed read it; see pardo status
  --force                  resume a stored run with another command or inputs, or start
                           over in a store that holds a run
  --mpi                    under mpiexec/srun: rank 0 schedules, the other ranks run tasks
  --jobs-per-rank N        slots on each worker rank with --mpi (default: the rank's CPUs)

exit status: 0 all tasks succeeded; 1-100 that many failed; 101 more than 100 failed;
--halt: the failing task's exit status; 130/143 interrupted by SIGINT/SIGTERM; 141 stdout
closed (SIGPIPE); 255 error.
"""

def parse(argv):
    """Split argv into (options dict, command words, sources). Raises UsageError."""
    from .._batch import Source

    opts = {"arg_file": []}
    pre = profile_words(argv)
    if pre:
        if parse_options(pre, opts) != len(pre):
            raise UsageError(f"$PARALLEL or a profile holds a word that is not an option: "
                             f"{pre[parse_options(pre, {})]!r}")
    i = parse_options(argv, opts)
    arg_sep = opts.get("arg_sep") or ":::"
    file_sep = opts.get("arg_file_sep") or "::::"
    seps = {arg_sep: ":::", arg_sep + "+": ":::+", file_sep: "::::", file_sep + "+": "::::+"}
    command = []
    while i < len(argv) and argv[i] not in seps:
        command.append(argv[i])
        i += 1
    sources = [Source(path=path) for path in opts["arg_file"]]  # -a sources come first
    while i < len(argv):
        sep = seps[argv[i]]
        i += 1
        vals = []
        while i < len(argv) and argv[i] not in seps:
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
    if opts.get("isolation"):
        os.environ["PARDO_ISOLATION"] = opts["isolation"]
    if opts.get("mpi"):
        # before inputs are read: a worker rank serves tasks and never reads them
        from .._mpi import enter

        engine = enter(_int(opts, "jobs_per_rank", len(os.sched_getaffinity(0)), minimum=1))
        if isinstance(engine, int):
            return engine  # a worker rank, done serving
        if engine is not None:
            try:
                return _batch_main(opts, command, sources, engine)
            finally:
                engine.close()  # whatever happened, the worker ranks get SHUTDOWN
    elif opts.get("jobs_per_rank") is not None:
        raise UsageError("--jobs-per-rank needs --mpi")
    return _batch_main(opts, command, sources, None)


def _batch_main(opts, command, sources, engine):
    """Everything of ``pardo run`` after the ``--mpi`` branch: on this machine's engine
    (``engine`` None) or on rank 0 of an MPI job with the mpi part's remote engine."""
    from .._batch import PerlExpressions

    # {= perl =} and --rpl: one perl process for the run evaluates them (started once
    # every template has registered its code)
    perl = PerlExpressions(opts.get("parens") or "{==}")
    try:
        return _batch_run(opts, command, sources, engine, perl)
    finally:
        perl.close()


def _batch_run(opts, command, sources, engine, perl):
    from .._batch import (
        RESUME_MODES,
        Batch,
        Source,
        Template,
        arg_groups,
        compile_colsep,
        count_jobs,
        job_slots,
    )
    from .._run import INHERIT
    from .views import Out, View

    os.environ["PARALLEL_PID"] = str(os.getpid())  # GNU sets it for every job
    if opts.get("colsep") is not None:
        compile_colsep(opts["colsep"])  # before any input is read
    # -L N: N input lines per command, with context replace (as -X); -l [N]/--max-lines [N]:
    # the same without it (as -m), -l alone meaning 1
    for key in ("max_args", "max_replace"):
        # GNU reads these counts with its size units too: -n2k is 2000 arguments, -N1K 1024
        m = re.fullmatch(r"(\d+)([kKmMgG])", str(opts.get(key, "")))
        if m:
            mult = {"k": 10**3, "K": 1 << 10, "m": 10**6, "M": 1 << 20, "g": 10**9,
                    "G": 1 << 30}[m.group(2)]
            opts[key] = str(int(m.group(1)) * mult)
    pipe = opts.get("pipe") or opts.get("pipe_part")
    if opts.get("max_lines_x") is not None and opts.get("max_replace") is None and not pipe:
        opts["max_replace"] = opts["max_lines_x"]
    if opts.get("max_lines") is not None and opts.get("max_args") is None:
        opts["max_args"] = opts["max_lines"] or "1"
    # --extensionreplace STR and its siblings: STR stands for {.} (and so on)
    aliases = {opts["rpl_" + op]: "{" + op + "}" for op in (".", "/", "//", "/.", "#", "%")
               if opts.get("rpl_" + op)}
    if aliases:
        alt = re.compile("|".join(re.escape(a) for a in sorted(aliases, key=len, reverse=True)))
        command = [alt.sub(lambda m: aliases[m.group()], w) for w in command]
    n_replace = _int(opts, "max_replace")
    n_args = _int(opts, "max_args")
    per_job = n_replace if n_replace is not None else n_args
    replace = opts.get("replace")
    if replace is None and opts.get("replace_i") is not None:
        replace = opts["replace_i"] or "{}"  # -i / --replace: an optional value, {} alone
    # -X, -m, --xargs: as many arguments per command line as fit (GNU: -X and -N replace
    # in context; -m and --xargs do not)
    fill_mode = next((m for m in ("X", "m", "xargs") if opts.get("fill_" + m)), None)
    template_kw = dict(replace=replace or "{}", context=n_replace is not None or fill_mode == "X",
                       quote_words=bool(opts.get("quote")), plus=bool(opts.get("plus")),
                       rpl=opts.get("rpl") or (), perl=perl)
    template = Template(command, append=not pipe, **template_kw)
    resume = next((mode for mode in RESUME_MODES if opts.get(mode.replace("-", "_"))), None)
    if resume is not None and not opts.get("joblog") and not opts.get("store"):
        raise UsageError("--resume/--resume-failed/--retry-failed need --joblog FILE or "
                         "--store FILE")
    if opts.get("store") and opts.get("dry_run") and resume is not None and not opts.get("joblog"):
        # a dry run opens no store (it would record a run that never ran)
        raise UsageError("--dry-run does not read a --store: drop --dry-run, or give the "
                         "run's --joblog FILE to plan the resume from")
    pipe_in = None
    if pipe:
        pipe_in = pipe_input(opts, sources)
        sources = []
    elif not sources and resume != "retry-failed":
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError("no input: give ::: values, :::: files, -a FILE, or pipe stdin")
        if not command and os.isatty(sys.stdin.fileno()):
            raise UsageError("missing command: pardo run COMMAND ::: VALUES (see --help)")
        sources = [Source(path="-")]
    # GNU: {n} beyond the inputs there are expands to nothing (no error)
    for s in sources:
        s.open(stdin=sys.stdin.buffer if s.path == "-" else None)
    if opts.get("header") is not None and per_job and not pipe:
        raise UsageError("--header with -N/-n/-L is not supported by pardo run")
    if opts.get("null"):
        delim = b"\0"
    elif opts.get("delimiter") is not None:
        delim = opts["delimiter"].encode().decode("unicode_escape").encode("latin-1")
        # GNU: -d splits ::: values too
        for s in sources:
            if s.values is not None:
                s.values = [p for v in s.values
                            for p in split_value(v, delim.decode("latin-1"))]
    else:
        delim = b"\n"
    header_names = None
    if opts.get("header") is not None and not pipe:
        command, header_names = apply_header(command, sources, delim, opts.get("colsep"))
        template = Template(command, **template_kw)
    trim = opts.get("trim")
    if trim is None and opts.get("colsep") is not None:
        trim = "rl"  # GNU: --colsep implies --trim rl
    if trim is not None and trim not in ("n", "l", "r", "lr", "rl"):
        raise UsageError(f"--trim: {trim!r} is not n, l, r, lr or rl")
    # a record has one value per source (unknown with --colsep: columns vary)
    width = len(sources) if sources and opts.get("colsep") is None else None
    view = View(opts, max_output=_size(opts, "max_output", "256M", minimum=0), perl=perl,
                results_names=header_names, results_width=width)
    skip_empty = bool(opts.get("no_empty"))
    total = None
    needs_total = ((opts.get("plus") and re.search(r"\{##\}", " ".join(command)))
                   or any("total_jobs" in code for code in perl.expressions))
    fill = None
    if not pipe:
        # -X and -m spread the last arguments over the job slots
        fill = _line_filler(opts, template, template_kw, fill_mode, per_job,
                            lambda: job_slots(opts.get("jobs"), engine))
    if pipe:
        groups = pipe_blocks(opts, pipe_in, _int(opts, "max_replace", minimum=1))
    else:
        groups = arg_groups(sources, delimiter=delim, colsep=opts.get("colsep"),
                            max_args=per_job, skip_empty=skip_empty,
                            trim=None if trim in (None, "n") else trim,
                            eof=opts.get("eof") or None, fill=fill)
        if not skip_empty and not opts.get("eof") and fill_mode is None:
            # --bar needs a total: then the records of input files are counted ahead (GNU
            # reads them all first for --bar/--eta; counting keeps none of them). -X and -m
            # lines have no count before they are made; -N lines do (unless one reaches
            # the length limit, 63664 characters, before it has its n inputs)
            count_files = ((opts.get("bar") or needs_total) and resume is None
                           and opts.get("header") is None)
            total = count_jobs(sources, per_job, delim if count_files else None)
    perl.start()  # every template has registered its perl code now
    if needs_total:
        if total is None and pipe:
            raise UsageError("{##} and total_jobs() need the number of jobs before they run, "
                             "which --pipe does not know")
        if total is None:
            # GNU reads every input first to count the jobs; so does pardo, here only
            groups = list(groups)
            total = len(groups)
        template.set_total(total)
        view.set_total(total)
    kill_grace = _float(opts, "kill_grace", 2.0)
    if opts.get("termseq"):
        kill_grace = _termseq_grace(opts["termseq"])
    results = opts.get("results")
    store = None
    if opts.get("store") and not opts.get("dry_run"):
        # the store keeps what a task's printed output keeps (--results takes it whole)
        store = _open_store(opts["store"], opts, command, sources, resume,
                            view.max_output if view.mode == "group" and not view.results
                            else None)
    try:
        batch = Batch(
            template, groups, jobs=opts.get("jobs"), timeout=duration(opts.get("timeout")),
            kill_grace=kill_grace, retries=_int(opts, "retries", 1), halt=opts.get("halt"),
            keep_order=bool(opts.get("keep_order")), pin=bool(opts.get("pin")),
            delay=_float({"delay": duration(opts.get("delay"))}, "delay", 0.0),
            nice=_int(opts, "nice", None, minimum=-20),
            memory_limit=_size(opts, "memory_limit", None, minimum=1),
            spool=view.mode == "group",
            stdout=INHERIT if view.mode == "ungroup" else None,
            stderr=INHERIT if view.mode == "ungroup" else None,
            shell=os.environ.get("PARDO_SHELL", "/bin/sh"),
            results=None if is_results_file(results) else results,
            joblog=opts.get("joblog"), resume=resume,
            line_sink=view.line if view.mode == "line" else None,
            input_may_block=bool(pipe) or any(s.may_block() for s in sources),
            total=total, job_env=True, window=2 if pipe else None,
            blocks="round-robin" if pipe and opts.get("round_robin") else bool(pipe),
            store=store, engine=engine, results_names=header_names, results_width=width,
            # Nothing of this run keeps a task's max_rss: the faster start will do.
            rss_unread=store is None and not results,
        )
    except BaseException as e:  # an option refused: the store's run ends before a task
        if store is not None:
            store.end(f"stopped: {e}")
        raise
    if opts.get("dry_run"):
        out = Out(1)
        for line in batch.dry_run():
            out.write(line.encode("utf-8", "surrogateescape") + b"\n")
            if out.broken:
                break
        return batch.exit_status  # GNU: a job skipped by perl's skip() counts as failed
    if store is None:
        return _execute(batch, view, opts)
    how = "stopped"
    try:
        rc = _execute(batch, view, opts)
        how = {signal.SIGINT: "interrupted (SIGINT)", signal.SIGTERM: "interrupted (SIGTERM)",
               "pipe": "stopped: stdout closed", "halt": "halted",
               "start": "stopped: the first tasks could not start",
               "unstartable": "stopped: no task can start on this host",
               "store": f"stopped: {store.error}", None: "completed"}.get(batch.stopped_by,
                                                                          "stopped")
    finally:
        store.end(how)
    if store.error is not None:
        print(f"pardo run: {store.error}; what was recorded before is intact, and --resume "
              "runs the rest", file=sys.stderr)
        return 255
    return rc




def _line_filler(opts, template, template_kw, fill_mode, per_job, slots):
    """GNU's grouping of records into command lines by length (``-X``, ``-m``, ``--xargs``,
    ``-s``, ``-N``/``-n`` above 1), as a function of the records; None when every line
    takes one record (or none: ``-N0``). Prints ``--show-limits``."""
    from .._batch import LineLength, Template, command_line_limits, fill_lines, show_limits

    usable = command_line_limits()[1]
    max_len = usable
    if opts.get("max_chars") is not None:
        chars = _int(opts, "max_chars", minimum=1)
        if chars <= usable:
            max_len = chars
        else:  # GNU's words: it warns and keeps its own limit
            print(f"pardo run: warning: value for option -s should be < {usable}",
                  file=sys.stderr)
    if opts.get("show_limits"):
        sys.stdout.write(show_limits(max_len))
        sys.stdout.flush()
    if fill_mode is None and (per_job in (None, 0, 1)):
        return None
    replace = template_kw["replace"]
    also = []
    kw = dict(replace=replace, append=False, perl=template_kw["perl"],
              rpl=template_kw["rpl"])
    if opts.get("tagstring"):
        also.append(Template([opts["tagstring"]], **kw))
    elif opts.get("tag"):
        also.append(Template([replace], **kw))
    if opts.get("results"):
        also.append(Template([opts["results"]], **kw))
    length = LineLength(template, context=template_kw["context"], also=also,
                        bar=bool(opts.get("bar")), quote_all=bool(opts.get("quote")))
    spread = slots if fill_mode in ("X", "m") else None
    return lambda recs: fill_lines(recs, length, max_len, max_args=per_job or None,
                                   spread_over=spread)


def _open_store(path, opts, command, sources, mode, max_output):
    """The run's store, opened before any task starts (every refusal is one line). It keeps
    at most *max_output* bytes per stream, as many as are printed."""
    from .._store import RunStore, inputs_identity
    from .._supervisor import isolation

    recorded = {k: opts[k] for k in ("jobs", "timeout", "retries", "halt", "max_args",
                                     "max_replace", "colsep", "replace", "pin", "nice",
                                     "memory_limit") if opts.get(k) is not None}
    return RunStore(path, template=" ".join(command), inputs=inputs_identity(sources),
                    mode=mode, force=bool(opts.get("force")), options=recorded,
                    rung=isolation(), max_output=max_output)


def _a_task_can_start():
    """Whether a plain /bin/true starts here. When it cannot either, a first task's failure
    to start was the host's (no clone, no helper), not its input's, and every other task
    would fail the same way."""
    from .._run import run

    return run(["/bin/true"], timeout=30).status != "error"


def _execute(batch, view, opts):
    from .._result import Status
    from .views import PlainProgress, Progress, Summary

    out, err = view.out, view.err
    results_file = None
    if is_results_file(opts.get("results")):
        from .._batch import ResultsFile

        results_file = ResultsFile(opts["results"])
    tty = os.isatty(2)
    want_summary = opts.get("summary") or (tty and not opts.get("no_summary"))
    summary = Summary() if want_summary else None
    needs_line = (results_file is not None or view.verbose or view.print_stderr
                  or summary is not None)

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
    started_one = False
    try:
        if progress is not None:
            progress.__enter__()
        for r in batch:
            line = batch.command_line(r.job) if needs_line else None
            if view.print_stderr:
                # GNU prints it when the job starts; pardo when it reports the job
                err.write(line.encode("utf-8", "surrogateescape") + b"\n")
            started_one = started_one or r.status != Status.ERROR
            if r.status == Status.ERROR and batch.stopped_by == "unstartable":
                pass  # the tasks already under way when we stopped failed alike: said once
            elif r.status == Status.ERROR:
                if start_errors.add(r):
                    err.write(f"pardo: {r.error}\n".encode("utf-8", "surrogateescape"))
                if not started_one and batch.stopped_by is None and not _a_task_can_start():
                    err.write(b"pardo: no task can start on this host (a plain /bin/true cannot "
                              b"either); stopping. `pardo doctor` says why\n")
                    batch.stop("unstartable")
                elif start_errors.hopeless():
                    batch.stop("start")
            elif r.status == Status.TIMEOUT:
                err.write(b"pardo: task " + str(r.seq).encode() + b" timed out: " +
                          batch.command_line(r.job).encode("utf-8", "surrogateescape") + b"\n")
            if view.mode == "group" and r.status != Status.CANCELLED:
                if view.grouped(r, line) and r.status == Status.OK:
                    cut_ok += 1  # output lost: not a success (GNU has no limit to cut at)
            if results_file is not None:
                results_file.add(r, line)
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
        if results_file is not None:
            results_file.close()
    err.write(start_errors.report().encode("utf-8", "surrogateescape"))
    if batch.round_robin is not None and batch.round_robin.unfed and batch.stopped_by is None:
        # GNU parallel dies of SIGPIPE here; pardo says what was not fed and counts it
        err.write(b"pardo: --round-robin: every job had exited before the input ended; the "
                  b"rest of the input was not read\n")
        cut_ok += 1
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
