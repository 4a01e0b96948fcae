"""``pardo run``: GNU parallel's command line over :class:`pardo._batch.Batch`.

This module parses and renders only. Parsing is hand-written because GNU parallel's grammar
is not argparse's: options stop at the first word that is not an option (the command), and
``:::``, ``:::+``, ``::::``, ``::::+`` separate input sources after the command.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys

from ._cli.run_options import UsageError, parse_options

__all__ = ["main", "UsageError"]

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
  --bar, --eta, --progress live progress on stderr (a terminal only)
  -a, --arg-file FILE      read inputs from FILE (like :::: FILE); these come first
  --arg-sep SEP, --arg-file-sep SEP   use SEP instead of ::: / ::::
  --colsep REGEX           split input lines into columns {1} {2} ... (trims blanks)
  --trim n|l|r|lr          strip white space from the left/right of each input
  --header :               the first input line names the columns: {name}
  -N N                     N inputs per command; -n N without context replace
  -L N, -l [N], --max-lines [N]   N input lines per command (as -N / -n)
  -I STR, -i [STR]         use STR instead of {}
  --er/--bnr/--dnr/--bner/--seqreplace/--slotreplace STR
                           STR stands for {.} {/} {//} {/.} {#} {%}
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
  -J, --profile NAME       read options from ~/.parallel/NAME ($PARALLEL_HOME); $PARALLEL too
  --env NAME               accepted: every job inherits pardo's environment
Every job's environment has PARALLEL_SEQ and PARALLEL_PID, and PARALLEL_JOBSLOT when the
command mentions it. Long options may be abbreviated as in GNU parallel (--joblo); short ones
bundle (-kvj2). Remote execution (-S, --sshlogin, ...) is not pardo's: see --mpi.
pardo's own:
  --pin                    run slot i on its own CPU
  --memory-limit SIZE      per-task memory limit (e.g. 512M)
  --isolation RUNG         cgroup | shepherd | pgroup
  --kill-grace SECS        SIGTERM -> SIGKILL pause for deadlines (default 2)
  --max-output SIZE        per-task buffered output limit in --group mode (default 256M)
  --summary / --no-summary end-of-run summary on stderr (default: on a terminal)

exit status: 0 all tasks succeeded; 1-100 that many failed; 101 more than 100 failed;
--halt: the failing task's exit status; 130/143 interrupted by SIGINT/SIGTERM; 141 stdout
closed (SIGPIPE); 255 error.
"""

def _profile_words(argv):
    """Words of the -J/--profile files named at the head of *argv* and of ``$PARALLEL``,
    which GNU parallel reads before the command line (profiles first)."""
    import shlex

    words = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-", "--"):
        a, name = argv[i], None
        if a in ("-J", "--profile") and i + 1 < len(argv):
            name, i = argv[i + 1], i + 1
        elif a.startswith("--profile="):
            name = a.partition("=")[2]
        elif a.startswith("-J") and not a.startswith("--"):
            name = a[2:]
        if name is not None:
            words += shlex.split(_read_profile(name), comments=True)
        i += 1
    env = os.environ.get("PARALLEL")
    if env:
        words += shlex.split(env)
    return words


def _read_profile(name):
    base = os.environ.get("PARALLEL_HOME") or os.path.expanduser("~/.parallel")
    path = name if "/" in name else os.path.join(base, name)
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"-J {name}: cannot read profile {path!r}: {e.strerror}") from None


def parse(argv):
    """Split argv into (options dict, command words, sources). Raises UsageError."""
    from ._inputs import Source

    opts = {"arg_file": []}
    pre = _profile_words(argv)
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


def _pipe_input(opts, sources):
    """The stream --pipe cuts: stdin, or the one -a/:::: file (--pipepart needs one)."""
    files = [s for s in sources if s.path is not None]
    if any(s.values is not None for s in sources) or len(files) > 1:
        raise UsageError("--pipe reads one stream: stdin or a single -a FILE")
    if files and files[0].path != "-":
        files[0].open()
        return files[0]._fh
    if opts.get("pipe_part"):
        raise UsageError("--pipepart needs -a FILE")
    return sys.stdin.buffer


def _pipe_jobs(opts, fh, skip):
    """One job per block of *fh* (--pipe), each block holding the --header lines first."""
    from ._batch import _Job
    from ._batch.pipe import blocks, parse_block_size, read_header

    try:
        size = parse_block_size(opts.get("block_size") or "1M")
    except ValueError as e:
        raise UsageError(str(e)) from None
    rec_n = _int(opts, "max_replace", minimum=1)
    lines = _int(opts, "max_lines_x", minimum=1)
    esc = opts.get("regexp")  # with --regexp they are regular expressions, else literal

    def sep(key, default):
        v = opts.get(key, default)
        return v.encode("utf-8", "surrogateescape") if esc else \
            v.encode().decode("unicode_escape").encode("latin-1")

    # GNU: --recstart alone means records have no end string
    recend = sep("recend", "" if opts.get("recstart") is not None else "\n")
    recstart = sep("recstart", "")
    head, rest = b"", b""
    if opts.get("header") is not None:
        head, rest = read_header(fh, opts["header"])
    seq = 0
    for block in blocks(fh, block_size=size, recend=recend, recstart=recstart,
                        regexp=bool(esc), records=rec_n, lines=lines if not rec_n else None,
                        start=rest):
        seq += 1
        if skip and seq in skip:
            continue
        yield _Job(seq, (), input=head + block if head else block)


def _is_results_file(name):
    # --results NAME.csv|.tsv|.json: one file of records instead of a directory
    return bool(name) and name.endswith((".csv", ".tsv", ".json"))


def _apply_header(command, sources, delim, colsep):
    """``--header``: the first value of each source (split by ``--colsep``) names its
    column; ``{name}`` in the command becomes that column's ``{n}``."""
    names = []
    for s in sources:
        first = s.take_first(delim)
        if first is None:
            continue
        cols = re.split(colsep, first) if colsep is not None else [first]
        names += [c.strip(" \t") if colsep is not None else c for c in cols]
    by_len = sorted(((n, i) for i, n in enumerate(names, 1) if n), key=lambda t: -len(t[0]))
    out = []
    for w in command:
        for n, i in by_len:
            w = w.replace("{" + n + "}", "{" + str(i) + "}")
        out.append(w)
    return out


def _duration(v):
    """GNU's durations: seconds, or a number with s/m/h/d (``2m``, ``1h30m``); ``N%`` and
    anything else pass through unchanged to be checked where they are used."""
    if v is None or not re.fullmatch(r"(\d+(\.\d*)?[smhd])+", str(v)):
        return v
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return str(sum(float(n) * unit[u] for n, u in re.findall(r"(\d+(?:\.\d*)?)([smhd])", v)))


def _split_value(v, delim):
    parts = v.split(delim)
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing delimiter ends the last record, as in a file
    return parts


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


def _size(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)[bB]?", str(s))
    if not m:
        raise UsageError(f"{s!r} is not a size such as 512M")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


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


class _Out:
    """Writes to an fd, retrying short writes; remembers a broken pipe instead of raising."""

    def __init__(self, fd):
        self.fd = fd
        self.broken = False

    def write(self, data):
        if self.broken or not data:
            return
        mv = memoryview(data)
        try:
            while mv:
                n = os.write(self.fd, mv)
                mv = mv[n:]
        except BrokenPipeError:
            self.broken = True


def _tagged(data, tag):
    lines = data.split(b"\n")
    last = lines.pop()
    out = b"".join(tag + ln + b"\n" for ln in lines)
    return out + (tag + last if last else b"")


def _known_total(sources, n_per_job):
    """Number of jobs if every source is a ::: list (else None: a file streams)."""
    if any(s.values is None for s in sources):
        return None
    groups = []
    for s in sources:
        if s.linked and groups:
            groups[-1] = min(groups[-1], len(s.values))
        else:
            groups.append(len(s.values))
    total = math.prod(groups)
    if n_per_job:
        total = -(-total // n_per_job)
    return total


def main(argv: list[str]) -> int:
    """Run ``pardo run`` with *argv* (the words after ``run``); return the exit status."""
    try:
        return _main(argv)
    except UsageError as e:
        print(f"pardo run: {e}", file=sys.stderr)
        return 255
    except KeyboardInterrupt:  # Ctrl-C before the batch loop took over the signal
        return 130
    except OSError as e:
        where = f" {e.filename!r}" if e.filename else ""
        print(f"pardo run: {e.strerror or e}{where}", file=sys.stderr)
        return 255
    except ValueError as e:  # BatchError, InputError, TemplateError
        print(f"pardo run: {e}", file=sys.stderr)
        return 255


def _main(argv):
    from ._inputs import Source, group_records, records
    from ._template import Template

    opts, command, sources = parse(argv)
    if opts.get("help"):
        sys.stdout.write(USAGE)
        return 0
    if opts.get("version"):
        from . import __version__

        print(f"pardo {__version__}")
        return 0
    os.environ["PARALLEL_PID"] = str(os.getpid())  # GNU sets it for every job
    if opts.get("isolation"):
        os.environ["PARDO_ISOLATION"] = opts["isolation"]
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
    template = Template(command, replace=replace or "{}", context=n_replace is not None,
                        quote_words=bool(opts.get("quote")), plus=bool(opts.get("plus")),
                        append=not pipe)
    if pipe:
        pipe_in = _pipe_input(opts, sources)
        sources = []
    elif not sources:
        if opts.get("retry_failed"):
            sources = []
        elif sys.stdin is None or sys.stdin.closed:
            raise UsageError("no input: give ::: values, :::: files, -a FILE, or pipe stdin")
        elif not command and os.isatty(sys.stdin.fileno()):
            raise UsageError("missing command: pardo run COMMAND ::: VALUES (see --help)")
        else:
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
                            for p in _split_value(v, delim.decode("latin-1"))]
    else:
        delim = b"\n"
    if opts.get("header") is not None and not pipe:
        command = _apply_header(command, sources, delim, opts.get("colsep"))
        template = Template(command, replace=replace or "{}", context=n_replace is not None,
                            quote_words=bool(opts.get("quote")), plus=bool(opts.get("plus")))
    trim = opts.get("trim")
    if trim is None and opts.get("colsep") is not None:
        trim = "rl"  # GNU: --colsep implies --trim rl
    if trim is not None and trim not in ("n", "l", "r", "lr", "rl"):
        raise UsageError(f"--trim: {trim!r} is not n, l, r, lr or rl")

    joblog_path = opts.get("joblog")
    resuming = opts.get("resume") or opts.get("resume_failed") or opts.get("retry_failed")
    if resuming and not joblog_path:
        raise UsageError("--resume/--resume-failed/--retry-failed need --joblog FILE")
    skip = None
    logged = {}
    if resuming:
        from ._joblog import read_joblog

        logged = read_joblog(joblog_path)
        if opts.get("resume"):
            skip = set(logged)
        elif opts.get("resume_failed"):
            skip = {s for s, j in logged.items() if j.ok}

    from ._batch import Batch, _Job, numbered_jobs

    if opts.get("retry_failed"):
        shell = os.environ.get("PARDO_SHELL", "/bin/sh").encode()
        jobs_iter = (_Job(j.seq, (), [shell, b"-c", j.command.encode("utf-8", "surrogateescape")])
                     for j in sorted(logged.values(), key=lambda j: j.seq) if not j.ok)
        total = None
    elif pipe:
        jobs_iter = _pipe_jobs(opts, pipe_in, skip)
        total = None
    else:
        eof = opts.get("eof")
        recs = records(sources, delimiter=delim, colsep=opts.get("colsep"),
                       trim=None if trim in (None, "n") else trim, eof=eof or None)
        if opts.get("no_empty"):
            recs = (r for r in recs if any(v.strip() for v in r))
        jobs_iter = numbered_jobs(group_records(recs, per_job), skip=skip)
        total = None if skip or opts.get("no_empty") else _known_total(sources, per_job)

    if opts.get("plus") and re.search(r"\{##\}", " ".join(command)):
        if total is None:
            raise UsageError("{##} needs the number of jobs before they run: give the inputs "
                             "as ::: values")
        template.total = total
        for t in template._quote_words or ():
            t.total = total
    if opts.get("dry_run"):
        out = _Out(1)
        for job in jobs_iter:
            out.write((template.command(job.args, job.seq, 1) + "\n").encode("utf-8",
                                                                               "surrogateescape"))
            if out.broken:
                break
        return 0

    kill_grace = _float(opts, "kill_grace", 2.0)
    if opts.get("termseq"):
        kill_grace = _termseq_grace(opts["termseq"])
    view = _View(opts)
    import pardo

    batch = Batch(
        template, jobs_iter, jobs=opts.get("jobs"), timeout=_duration(opts.get("timeout")),
        kill_grace=kill_grace, retries=_int(opts, "retries", 1), halt=opts.get("halt"),
        keep_order=bool(opts.get("keep_order")), pin=bool(opts.get("pin")),
        delay=_float({"delay": _duration(opts.get("delay"))}, "delay", 0.0),
        nice=_int(opts, "nice", None, minimum=-20),
        memory_limit=_size(opts["memory_limit"]) if opts.get("memory_limit") else None,
        max_output=_size(opts.get("max_output", "256M")) if view.mode == "group" else None,
        stdout=pardo.INHERIT if view.mode == "ungroup" else None,
        stderr=pardo.INHERIT if view.mode == "ungroup" else None,
        shell=os.environ.get("PARDO_SHELL", "/bin/sh"),
        results=None if _is_results_file(opts.get("results")) else opts.get("results"),
        line_sink=view.line if view.mode == "line" else None,
        input_may_block=bool(pipe) or any(s.may_block() for s in sources),
        total=total, job_env=True, window=2 if pipe else None,
    )
    return _execute(batch, view, opts, total, joblog_path, resuming)


class _View:
    """How task output reaches our stdout/stderr: grouped per task (default), line by line
    (--line-buffer), or not touched at all (--ungroup); with --tag/--tagstring prefixes."""

    def __init__(self, opts):
        self.out, self.err = _Out(1), _Out(2)
        self.mode = ("ungroup" if opts.get("ungroup") else
                     "line" if opts.get("line_buffer") else "group")
        self._tag = bool(opts.get("tag"))
        self._tag_template = None
        if opts.get("tagstring") is not None:
            from ._template import Template

            # GNU: a tagstring without replacement strings is the tag itself; \t is a tab
            self._tag_template = Template([opts["tagstring"].replace("\\t", "\t")],
                                          append=False)
            self._tag_template.quote = False  # GNU: the tag shows values as they are
        # --files: each task's stdout goes to a file in --tmpdir; its name is printed
        self.files = bool(opts.get("files"))
        self.results = opts.get("results")
        self.tmpdir = opts.get("tmpdir") or os.environ.get("TMPDIR") or "/tmp"
        self.verbose = opts.get("verbose")  # -v: the command on stdout, before its output
        self.print_stderr = opts.get("print_stderr")  # --verbose/-t: on stderr as it starts

    def tag_of(self, inputs, seq, slot):
        if self._tag_template is not None:
            t = self._tag_template.command(inputs, seq, slot)
        elif self._tag:
            t = " ".join(inputs)
        else:
            return None
        return t.encode("utf-8", "surrogateescape") + b"\t"

    def line(self, job, stream, data):
        """Batch's line sink: whole lines of a running task."""
        tag = self.tag_of(job.args, job.seq, job.slot)
        (self.out if stream == 1 else self.err).write(_tagged(data, tag) if tag else data)

    def grouped(self, r, line):
        """A finished task's captured output, all at once."""
        tag = self.tag_of(r.inputs, r.seq, r.slot)
        if self.verbose:
            self.out.write((tag or b"") + line.encode("utf-8", "surrogateescape") + b"\n")
        so, se = r.stdout, r.stderr
        if self.files and self.results:
            # GNU: with --results, the files are the results' stdout files
            from ._batch import _results_path_part

            parts = [self.results]
            for i, v in enumerate(r.inputs, 1):
                parts += [str(i), _results_path_part(v)]
            so = os.path.join(*parts, "stdout").encode("utf-8", "surrogateescape") + b"\n"
        elif self.results:
            return  # GNU: with --results the output goes there only, none to the terminal
        elif self.files:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="par", suffix=".par", dir=self.tmpdir)
            _Out(fd).write(so or b"")
            os.close(fd)
            name = os.path.join(self.tmpdir, os.path.basename(name))
            so = name.encode("utf-8", "surrogateescape") + b"\n"
        if tag:
            so = _tagged(so, tag) if so else so
            se = _tagged(se, tag) if se else se
        self.out.write(so)
        self.err.write(se)
        if r.output_truncated:
            self.err.write(f"pardo: output of task {r.seq} was cut at --max-output\n".encode())


def _execute(batch, view, opts, total, joblog_path, resuming):
    from ._joblog import JobLog, exit_fields
    from ._report import Progress, Summary
    from ._result import Status

    out, err = view.out, view.err
    joblog = JobLog(joblog_path, append=bool(resuming)) if joblog_path else None
    results_file = None
    if _is_results_file(opts.get("results")):
        from ._batch.results_file import ResultsFile

        results_file = ResultsFile(opts["results"])
    tty = os.isatty(2)
    want_summary = opts.get("summary") or (tty and not opts.get("no_summary"))
    summary = Summary() if want_summary else None
    needs_line = (joblog is not None or results_file is not None or view.verbose
                  or view.print_stderr
                  or summary is not None)

    def on_signal(signum, frame):
        batch.stop(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = None
    if tty and (opts.get("bar") or not os.isatty(1)):
        progress = Progress(batch, total)
    try:
        if progress is not None:
            progress.__enter__()
        for r in batch:
            job = r.job
            line = batch.command_line(job) if needs_line else None
            if view.print_stderr:
                # GNU prints it when the job starts; pardo when it reports the job
                err.write(line.encode("utf-8", "surrogateescape") + b"\n")
            if r.status == Status.ERROR:
                err.write(f"pardo: {r.error}\n".encode("utf-8", "surrogateescape"))
            elif r.status == Status.TIMEOUT:
                err.write(b"pardo: task " + str(r.seq).encode() + b" timed out: " +
                          batch.command_line(job).encode("utf-8", "surrogateescape") + b"\n")
            if view.mode == "group" and r.status != Status.CANCELLED:
                view.grouped(r, line)
            if results_file is not None:
                ev, sig = exit_fields(r)
                results_file.write(r.seq, r.started_at, r.duration, len(r.stdout or b""), ev,
                                   sig, line, r.inputs, r.stdout or b"", r.stderr or b"")
            if joblog is not None:
                ev, sig = exit_fields(r)
                joblog.write(r.seq, r.started_at, r.duration, ev, sig, line,
                             len(r.stdout) if r.stdout else 0)
            if summary is not None:
                summary.add(r, line)
            if out.broken:
                batch.stop("pipe")
    finally:
        if progress is not None:
            progress.__exit__(None, None, None)
        for s, h in old.items():
            signal.signal(s, h)
        if joblog is not None:
            joblog.close()
        if results_file is not None:
            results_file.close()
    if summary is not None and batch.finished:
        err.write(summary.render().encode("utf-8", "surrogateescape"))
    hr = batch.halt_result
    if batch.stopped_by == "halt" and hr is not None:
        # GNU parallel says which job made it stop; so do we, on one line
        err.write((f"pardo: --halt {opts.get('halt')}: stopped after task {hr.seq} "
                   f"{hr.describe()}: {batch.command_line(hr.job)}\n")
                  .encode("utf-8", "surrogateescape"))
    reason = batch.stopped_by
    if reason == signal.SIGINT:
        return 130
    if reason == signal.SIGTERM:
        return 143
    if reason == "pipe":
        return 141  # stdout was closed under us; GNU parallel dies of SIGPIPE here
    if batch.halt_exit is not None:
        return batch.halt_exit
    failed = batch.failed
    return failed if failed <= 100 else 101
