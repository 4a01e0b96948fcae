"""GNU parallel's perl replacement strings: ``{= perl expression =}``, ``{=N ... =}`` and
``--rpl 'TAG perl expression'``, evaluated by one perl process per run.

::

    Template.command()  ──E idx seq slot total value @arg──►  perl -e _PROGRAM
      (a perl field)    ◄──── unquote? skip? new $_ ───────   (each expression compiled
                                                              once, as GNU compiles it)

GNU parallel is a perl program and runs these expressions in its own interpreter, in
package ``Arg``: ``$_`` is the input value, the expression changes it, and helpers such
as ``Q()``, ``uq()``, ``skip()``, ``total_jobs()``, ``$job->seq()`` and ``@arg`` are there.
pardo keeps one perl process for the whole run, with the same package and helpers, so an
expression behaves as it does in GNU parallel (its variables live from one job to the next
too), at the cost of a pipe round trip per value rather than a perl start per task.

Messages are length-prefixed bytes both ways, so values may hold any byte (newlines too).
"""

from __future__ import annotations

import shutil
import subprocess

from .._errors import TemplateError

__all__ = ["PerlExpressions", "perl_missing_message"]

# The helpers are GNU parallel 20221122's (package Arg, shell_quote_scalar_default,
# perl_quote_scalar), written again for this loop.
_PROGRAM = r"""
use strict;
no warnings;
binmode STDIN; binmode STDOUT; $| = 1;
sub rd {
    my $n = <STDIN>;
    defined $n or exit 0;
    chomp $n;
    my $b = '';
    while (length($b) < $n) {
        my $r = read(STDIN, $b, $n - length($b), length($b));
        defined $r && $r > 0 or exit 0;
    }
    return $b;
}
package PardoJob;
sub seq { $_[0]{seq} }
sub slot { $_[0]{slot} }
sub skip { $_[0]{skip} = 1 }
package Arg;
use POSIX ();
our ($pardo_job, $pardo_uq, $pardo_total, @arg);
sub Q {
    local $_ = $_[0];
    if (/[^-_.+a-z0-9\/]/i) {
        s/'/'"'"'/g; $_ = "'$_'"; s/^''//; s/''$//; return $_;
    }
    return $_ eq "" ? "''" : $_;
}
sub pQ { my $a = $_[0]; $a =~ s/[\\\"\$\@]/\\$&/go if defined $a; return $a; }
sub uq { $pardo_uq = 1 }
sub total_jobs { $pardo_total }
sub skip { $pardo_job->skip() }
sub slot { $pardo_job->slot() }
sub seq { $pardo_job->seq() }
sub hash { require B; B::hash(@_) }
sub _t { POSIX::strftime($_[0], localtime(time())) }
sub yyyy_mm_dd_hh_mm_ss { _t("%Y-%m-%dT%H:%M:%S") }
sub yyyy_mm_dd_hh_mm { _t("%Y-%m-%dT%H:%M") }
sub yyyy_mm_dd { _t("%Y-%m-%d") }
sub hh_mm_ss { _t("%H:%M:%S") }
sub hh_mm { _t("%H:%M") }
sub yyyymmddhhmmss { _t("%Y%m%d%H%M%S") }
sub yyyymmddhhmm { _t("%Y%m%d%H%M") }
sub yyyymmdd { _t("%Y%m%d") }
sub hhmmss { _t("%H%M%S") }
sub hhmm { _t("%H%M") }
package main;
my @subs;
while (my $line = <STDIN>) {
    if ($line =~ /^C/) {
        my $code = rd();
        my $s = eval("package Arg; sub { no strict; no warnings; my \$job = shift; "
                     . $code . "\n}");
        if ($s) { push @subs, $s; print "OK\n"; }
        else { my $e = "$@"; print "ER " . length($e) . "\n" . $e; }
        next;
    }
    my (undef, $idx, $seq, $slot, $total, $n) = split ' ', $line;
    my $v = rd();
    my @a = (undef);
    push @a, rd() for 1 .. $n;
    my $job = bless { seq => $seq, slot => $slot, skip => 0 }, 'PardoJob';
    $Arg::pardo_job = $job;
    $Arg::pardo_uq = 0;
    $Arg::pardo_total = $total;
    @Arg::arg = @a;
    local $_ = $v;
    if (eval { $subs[$idx]->($job); 1 }) {
        $_ = '' unless defined $_;
        print "$Arg::pardo_uq $job->{skip} " . length($_) . "\n" . $_;
    } else {
        my $e = "$@";
        print "ER 0 " . length($e) . "\n" . $e;
    }
}
"""


def perl_missing_message():
    return ("{= perl expression =} and --rpl need perl (GNU parallel's own language), "
            "which is not on PATH: install perl, or write the change as shell code or "
            "with --plus")


def _one_line(text):
    return "; ".join(line.strip() for line in text.strip().splitlines())


def _frame(b: bytes) -> bytes:
    return b"%d\n" % len(b) + b


class PerlExpressions:
    """The perl expressions of a run's templates, and the perl process that evaluates them.

    Templates :meth:`add` their expressions while they are parsed; :meth:`start` then runs
    perl and compiles each once. Close it (or use it as a context manager) at the end.
    """

    def __init__(self, parens: str = "{==}"):
        self.expressions: list[str] = []
        self._compiled = 0  # expressions perl has compiled (in order)
        self._p = None
        # GNU's --parens: the strings that open and close an expression, given together
        # (its first half opens, the rest closes)
        half = len(parens) // 2
        if half < 1:
            raise TemplateError(f"--parens {parens!r}: give the opening and closing strings "
                                "together (as {==})")
        self.parens = (parens[:half], parens[half:])

    def add(self, code: str) -> int:
        """Register one expression's code; its index names it in :meth:`evaluate`."""
        self.expressions.append(code)
        return len(self.expressions) - 1

    def start(self):
        """Run perl and compile every expression (nothing to do without any).

        Raises:
            TemplateError: perl is missing, or an expression does not compile (the
                message has perl's own words, as GNU parallel's "Cannot use" error does).
        """
        if self._p is not None:
            self._compile_new()
            return
        if not self.expressions:
            return
        perl = shutil.which("perl")
        if perl is None:
            raise TemplateError(perl_missing_message())
        # its own session: a Ctrl-C meant for the run does not kill it while a command is
        # being rendered; it ends when its stdin closes, even if pardo was killed
        self._p = subprocess.Popen([perl, "-e", _PROGRAM], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, start_new_session=True)
        try:
            self._compile_new()
        except BaseException:
            self.close()
            raise

    def _compile_new(self):
        """Compile the expressions added since the last call (templates made after the
        start, such as --tagstring's, register theirs late)."""
        while self._compiled < len(self.expressions):
            code = self.expressions[self._compiled]
            self._p.stdin.write(b"C\n" + _frame(code.encode("utf-8", "surrogateescape")))
            self._p.stdin.flush()
            head = self._p.stdout.readline()
            if head.startswith(b"ER "):
                err = self._p.stdout.read(int(head.split()[1])).decode("utf-8", "replace")
                raise TemplateError(f"cannot use the perl expression {code!r}: "
                                    f"{_one_line(err)}")
            if head != b"OK\n":
                raise TemplateError("perl stopped while compiling the perl expressions")
            self._compiled += 1

    def evaluate(self, index, value, args, seq, slot, total):
        """(new value, unquoted?, skip?) of expression *index* on *value* (a str) for the
        job *seq* in *slot* whose inputs are *args*; *total* is the number of jobs or None."""
        if self._p is None:
            raise TemplateError("the perl expressions were not started")
        if index >= self._compiled:
            self._compile_new()
        enc = [v.encode("utf-8", "surrogateescape") for v in args]
        msg = [b"E %d %d %d %s %d\n" % (index, seq, slot,
                                        b"%d" % total if total is not None else b"0",
                                        len(enc)),
               _frame(value.encode("utf-8", "surrogateescape"))]
        msg += [_frame(b) for b in enc]
        try:
            self._p.stdin.write(b"".join(msg))
            self._p.stdin.flush()
            head = self._p.stdout.readline().split()
        except (BrokenPipeError, ValueError):
            head = []
        if len(head) != 3:
            raise TemplateError("perl, which evaluates the {= =} expressions, stopped")
        data = self._p.stdout.read(int(head[2]))
        if head[0] == b"ER":
            raise TemplateError(f"the perl expression {self.expressions[index]!r} failed: "
                                f"{_one_line(data.decode('utf-8', 'replace'))}")
        return data.decode("utf-8", "surrogateescape"), head[0] == b"1", head[1] == b"1"

    def close(self):
        """End the perl process (its stdin closes; it exits at EOF)."""
        p, self._p = self._p, None
        if p is None:
            return
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
