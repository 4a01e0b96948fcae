"""What ``pardo run`` shows a person: the tasks' output (grouped, line by line, tagged),
the live progress bar and the end-of-run summary.

All are views: they read the batch's counters and the finished results and render. The bar
is drawn by rich's ``Live`` on its own refresh thread at a bounded rate, from a snapshot of
the counters, so the scheduler never waits on the terminal.
"""

from __future__ import annotations

import heapq
import os
import time
from array import array

from .._result import Status

__all__ = ["Out", "View", "Summary", "Progress", "PlainProgress", "human_size"]

_SLOWEST = 5


class Out:
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


class View:
    """How task output reaches our stdout/stderr: grouped per task (default), line by line
    (--line-buffer), or not touched at all (--ungroup); with --tag/--tagstring prefixes."""

    def __init__(self, opts, max_output=None, perl=None, results_names=None,
                 results_width=None):
        self.out, self.err = Out(1), Out(2)
        self.max_output = max_output  # --group: printed per stream of a task at most
        self.mode = ("ungroup" if opts.get("ungroup") else
                     "line" if opts.get("line_buffer") else "group")
        self._tag = bool(opts.get("tag"))
        self._tag_template = None
        if opts.get("tagstring") is not None:
            from .._batch import Template

            # GNU: the tag shows values as they are; a tagstring without replacement
            # strings is the tag itself; \t is a tab
            self._tag_template = Template([opts["tagstring"].replace("\\t", "\t")],
                                          quote=False, append=False, perl=perl,
                                          rpl=opts.get("rpl") or ())
        # --files: each task's stdout goes to a file in --tmpdir; its name is printed
        self.files = bool(opts.get("files"))
        self.results = opts.get("results")
        self.results_names = results_names  # --header: the names of the input columns
        self.results_width = results_width  # values per input record, when known
        self.tmpdir = opts.get("tmpdir") or os.environ.get("TMPDIR") or "/tmp"
        self.verbose = opts.get("verbose")  # -v: the command on stdout, before its output
        self.print_stderr = opts.get("print_stderr")  # --verbose/-t: on stderr

    def set_total(self, total):
        """The number of jobs, for ``{##}`` and ``total_jobs()`` in a --tagstring."""
        if self._tag_template is not None:
            self._tag_template.set_total(total)

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
        """A finished task's output (spooled in files while it ran), all at once, cut at
        --max-output per stream. Returns True when something was cut."""
        from .._batch import copy_out, results_path, size_of

        tag = self.tag_of(r.inputs, r.seq, r.slot)
        if self.verbose:
            self.out.write((tag or b"") + line.encode("utf-8", "surrogateescape") + b"\n")
        streams = ((1, self.out), (2, self.err))
        cut = []
        if self.files and self.results:
            # GNU: with --results, the files are the results' stdout files
            name = os.path.join(results_path(self.results, r.inputs, self.results_names,
                                           self.results_width), "stdout")
            self._file_name(name, tag)
            streams = ((2, self.err),)
        elif self.results:
            return False  # GNU: with --results the output goes there only
        elif self.files:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="par", suffix=".par", dir=self.tmpdir)
            try:
                copy_out(r, 1, Out(fd).write, None, self.max_output)
            finally:
                os.close(fd)
            self._file_name(os.path.join(self.tmpdir, os.path.basename(name)), tag)
            streams = ((2, self.err),)
            if self.max_output is not None and size_of(r, 1) > self.max_output:
                # cut into its file as it would be on our stdout: a failure all the same
                cut.append(f"stdout ({human_size(size_of(r, 1))})")
        for stream, dest in streams:
            size = size_of(r, stream)
            copy_out(r, stream, dest.write, tag, self.max_output)
            if self.max_output is not None and size > self.max_output:
                cut.append(f"{'stdout' if stream == 1 else 'stderr'} ({human_size(size)})")
        if cut or r.output_truncated:
            what = " and ".join(cut) or "its output"
            self.err.write(f"pardo: task {r.seq}: {what} cut at --max-output "
                           f"{human_size(self.max_output)}; the task counts as failed\n"
                           .encode())
            return True
        return False

    def _file_name(self, name, tag):
        data = name.encode("utf-8", "surrogateescape") + b"\n"
        self.out.write(_tagged(data, tag) if tag else data)


def human_size(n):
    """Bytes as a person reads them: 512, 1.5K, 200M, 3G."""
    if n is None:
        return "(none)"
    for unit in ("", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:g}{unit}" if unit == "" else f"{n:.4g}{unit}"
        n /= 1024
    return str(n)


class Summary:
    """Collects what the end-of-run summary shows, in O(1) memory per task (one float).

    Args:
        clock: the monotonic clock the run's wall time is read from (tests pass a fake).
    """

    def __init__(self, clock=time.monotonic):
        self.durations = array("d")
        self.slowest = []  # min-heap of (duration, seq, command)
        self.failures: dict[str, list] = {}  # reason -> [count, first seqs...]
        self.by_status: dict[str, int] = {}
        self._clock = clock
        self.started = clock()

    def add(self, result, command):
        st = result.status.value
        self.by_status[st] = self.by_status.get(st, 0) + 1
        d = result.duration
        self.durations.append(d)
        item = (d, result.seq, command)
        if len(self.slowest) < _SLOWEST:
            heapq.heappush(self.slowest, item)
        elif d > self.slowest[0][0]:
            heapq.heapreplace(self.slowest, item)
        if result.status != Status.OK:
            entry = self.failures.setdefault(result.describe(), [0])
            entry[0] += 1
            if len(entry) < 4:
                entry.append(result.seq)

    def render(self) -> str:
        """The summary as plain text lines."""
        n = len(self.durations)
        wall = self._clock() - self.started
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.by_status.items()))
        lines = [f"pardo: {n} task{'s' if n != 1 else ''} in {wall:.2f} s ({counts or 'none'})"]
        if n:
            s = sorted(self.durations)
            p = lambda q: s[min(n - 1, int(q * n))]  # noqa: E731
            lines.append(f"  duration p50 {p(0.5):.3f} s, p95 {p(0.95):.3f} s, max {s[-1]:.3f} s")
            lines.append("  slowest:")
            for d, seq, cmd in sorted(self.slowest, reverse=True):
                lines.append(f"    {d:8.3f} s  #{seq}  {_short(cmd)}")
        if self.failures:
            lines.append("  failures:")
            for reason, entry in sorted(self.failures.items(), key=lambda kv: -kv[1][0]):
                seqs = ", ".join(f"#{s}" for s in entry[1:])
                more = ", ..." if entry[0] > len(entry) - 1 else ""
                lines.append(f"    {entry[0]:6d} x {reason} ({seqs}{more})")
        return "\n".join(lines) + "\n"


def _short(cmd, width=70):
    cmd = cmd.replace("\n", " ")
    return cmd if len(cmd) <= width else cmd[: width - 3] + "..."


class Progress:
    """A live progress bar on stderr (rich), fed from the batch's counters.

    Args:
        batch: the running :class:`pardo._batch.Batch` (its counters are read, never
            written).
        total: number of tasks if known (for percentage and ETA), else None.
        file: where to draw (default: stderr).
        clock: the monotonic clock elapsed time and ETA are read from.
    """

    def __init__(self, batch, total=None, file=None, clock=time.monotonic):
        from rich.console import Console
        from rich.live import Live

        self._batch = batch
        self._total = total
        self._clock = clock
        self._t0 = clock()
        self._console = Console(file=file, stderr=file is None)
        self._live = Live(get_renderable=self._render, console=self._console,
                          refresh_per_second=8, transient=False, redirect_stdout=False,
                          redirect_stderr=False)

    def _render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        b = self._batch
        done, running = b.finished, len(b.running)
        counts = dict(b.by_status)  # snapshot; the scheduler thread may add keys meanwhile
        elapsed = self._clock() - self._t0
        t = Table.grid(padding=(0, 1))
        total = self._total
        line = Text()
        if total:
            eta = elapsed / done * (total - done) if done else 0.0
            t.add_row(ProgressBar(total=total, completed=done, width=30),
                      Text(f"{done}/{total} {100 * done / total:3.0f}%  ETA {eta:5.1f}s"))
        else:
            line.append(f"{done} done  ")
        line.append(f"{running} running  ")
        for k in ("ok", "failed", "timeout", "signaled", "error", "cancelled"):
            if counts.get(k):
                style = "green" if k == "ok" else "red"
                line.append(f"{k} {counts[k]}  ", style=style)
        line.append(f"{elapsed:6.1f}s")
        t.add_row(line) if not total else t.add_row("", line)
        return t

    def __enter__(self):
        self._live.__enter__()
        return self

    def __exit__(self, *exc):
        self._live.__exit__(*exc)
        return False


class PlainProgress:
    """--bar when stderr is not a terminal: GNU parallel's plain progress lines, which
    zenity reads (``zenity --progress`` takes a line with a number as the percentage and a
    line starting with ``#`` as the text). A pair of lines when the whole percentage
    changes (or, without a total, at most once a second); called by the loop after each
    result, so it costs nothing while no task finishes.

    Args:
        batch: the running batch (its counters are read).
        total: number of tasks if known, else None.
        write: where the lines go (bytes).
    """

    def __init__(self, batch, total, write):
        self._batch = batch
        self._total = total
        self._write = write
        self._t0 = time.monotonic()
        self._last = None

    def update(self):
        done = self._batch.finished
        elapsed = time.monotonic() - self._t0
        if self._total:
            pct = min(100, 100 * done // self._total)
            if pct == self._last:
                return
            self._last = pct
            left = elapsed / done * (self._total - done) if done else 0.0
            text = f"{pct}\n# {elapsed:.0f} sec {done}/{self._total} done, ETA {left:.0f}s\n"
        else:
            if self._last is not None and elapsed - self._last < 1.0:
                return
            self._last = elapsed
            text = f"# {elapsed:.0f} sec {done} done\n"
        self._write(text.encode())
