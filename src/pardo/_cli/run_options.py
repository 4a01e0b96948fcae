"""GNU parallel's option grammar for ``pardo run``: Getopt::Long with bundling and
require_order, as GNU parallel configures it.

- Single-letter options bundle: ``-kv`` is ``-k -v``; a letter that takes a value ends the
  bundle and the rest of the word is its value (``-kj2``, ``-kd,``), or the next word is.
- Long options may be abbreviated to any unambiguous prefix of GNU parallel's own option
  names (``--joblo``; ``--ta`` is ambiguous there: ``--tag``, ``--tagstring``), so a prefix
  means the same option in both programs or is refused by both.
- Options stop at the first word that is not an option (the command).

GNU parallel's option table is kept whole (``GNU_SPECS``) so that abbreviations resolve as
they do in GNU parallel, and so that an option pardo does not support is named as such
instead of "unknown".
"""

from __future__ import annotations

import difflib
import re

from .._errors import UsageError

__all__ = ["parse_options", "OPTIONS", "REFUSED"]


# GNU parallel 20221122's options_hash(): names (|-separated aliases) and value type:
# "" flag, "=s" string, "=i" integer, "=f" float, ":s"/":f" optional value.
GNU_SPECS = """
B=s E=s H=i I=s L=s T U=s W=s X Y arg-file-sep|argfilesep=s arg-file|argfile|a=s
arg-sep|argsep=s bar basefile|bf=s basenameextensionreplace|bner=s basenamereplace|bnr=s bg
bin=s block-size|blocksize|block=s block-timeout|blocktimeout|bt=s bug cat cleanup
col-sep|colsep|C=s
color-failed|colour-failed|colorfailed|colourfailed|color-fail|colour-fail|colorfail|colourfail|cf
color|colour compress controlmaster|M csv ctag-string|ctagstring=s ctag ctrl-c|ctrlc
debug|D=s delay=s delimiter|d=s dirnamereplace|dnr=s dry-run|dryrun|dr embed env=s eof|e:s eta
exit|x extensionreplace|er=s fg fifo filter-hosts|filterhosts|filter-host filter=s g gnu
group-by|groupby=s group halt-on-error|haltonerror|halt=s header=s help|h
hgrp|hostgrp|hostgroup|hostgroups interactive|p joblog|jl=s jobs|j=s keep-order|keeporder|k
latest-line|latestline|ll limit=s line-buffer|line-buffered|linebuffer|linebuffered|lb
linkinputsource|xapplyinputsource=i link|xapply load=s m max-args|maxargs|n=s
max-chars|maxchars|s=s max-line-length-allowed|maxlinelengthallowed max-lines|maxlines|l:f
max-procs|maxprocs|P=s max-replace-args|maxreplaceargs|N=s memfree=s memsuspend=s
min-version|minversion=i nice=i no-ctrl-c|no-ctrlc|noctrlc no-keep-order|nokeeporder|nok|no-k
no-run-if-empty|norunifempty|r nonall noswap null|0 number-of-cores|numberofcores
number-of-cpus|numberofcpus number-of-sockets|numberofsockets
number-of-threads|numberofthreads onall open-tty|o output-as-files|outputasfiles|files
parens=s pipe-part|pipepart pipe|spreadstdin plain plus process-slot-var|processslotvar=s
profile|J=s progress quote|q recend=s recordenv|record-env recstart=s regexp|regex
remove-rec-sep|removerecsep|rrs replace|i:s results|result|res=s resume-failed|resumefailed
resume retries=s retry-failed|retryfailed return=s round-robin|roundrobin|round rpl=s
rsync-opts|rsyncopts=s semaphore-name|semaphorename|id=s
semaphore-timeout|semaphoretimeout|st=s semaphore seqreplace=s session shard=s
shebang|hashbang shell-completion|shellcompletion=s shell-quote|shellquote|shell_quote
show-limits|showlimits shuf silent skip-first-line|skipfirstline slotreplace=s
sql-and-worker|sqlandworker=s sql-master|sqlmaster=s sql-worker|sqlworker=s sql=s
ssh-delay|sshdelay=f ssh=s sshloginfile|slf=s sshlogin|S=s tag-string|tagstring=s tag tee
template|tmpl=s term-seq|termseq=s timeout=s tmpdir|tempdir=s tmux-pane|tmuxpane tmux tollef
total-jobs|totaljobs|total=s
transfer-file|transferfile|transfer-files|transferfiles|tf=s transfer trc=s trim=s tty
ungroup|u use-compress-program|compress-program|usecompressprogram|compressprogram=s
use-cores-instead-of-threads|usecoresinsteadofthreads
use-cpus-instead-of-cores|usecpusinsteadofcores
use-decompress-program|decompress-program|usedecompressprogram|decompressprogram=s
use-sockets-instead-of-threads|usesocketsinsteadofthreads v verbose|t version|V wait
will-cite|willcite|nn|nonotice|no-notice work-dir|workdir|wd=s xargs
"""

# pardo's own options, in the same notation (they take part in abbreviation too)
PARDO_SPECS = """
pin memory-limit=s isolation=s kill-grace=s max-output=s summary no-summary store=s force
mpi jobs-per-rank=s
"""


def _table(specs):
    names = {}  # name -> (canonical, type)
    for spec in specs.split():
        m = re.fullmatch(r"([^=:]+)([=:][sif])?", spec)
        aliases, kind = m.group(1).split("|"), m.group(2) or ""
        for a in aliases:
            names[a] = (aliases[0], kind)
    return names


_GNU = _table(GNU_SPECS)
_ALL = dict(_GNU, **_table(PARDO_SPECS))

# canonical name -> pardo's key in the options dict; count=True options count repeats,
# multi=True ones collect every value
OPTIONS = {
    "jobs": "jobs", "max-procs": "jobs", "P": "jobs", "timeout": "timeout",
    "term-seq": "termseq", "kill-grace": "kill_grace", "retries": "retries",
    "halt-on-error": "halt", "keep-order": "keep_order", "no-keep-order": "no_keep_order",
    "group": "group", "ungroup": "ungroup", "line-buffer": "line_buffer", "tag": "tag",
    "tag-string": "tagstring", "v": "verbose", "verbose": "print_stderr",
    "results": "results", "joblog": "joblog", "resume": "resume",
    "resume-failed": "resume_failed", "retry-failed": "retry_failed", "dry-run": "dry_run",
    "delay": "delay", "nice": "nice", "bar": "bar", "eta": "bar", "progress": "bar",
    "arg-file": "arg_file", "col-sep": "colsep", "max-replace-args": "max_replace",
    "max-args": "max_args", "I": "replace", "replace": "replace_i", "null": "null",
    "delimiter": "delimiter", "link": "link", "no-run-if-empty": "no_empty", "pin": "pin",
    "memory-limit": "memory_limit", "isolation": "isolation", "max-output": "max_output",
    "summary": "summary", "no-summary": "no_summary", "will-cite": "will_cite",
    "store": "store", "force": "force", "mpi": "mpi", "jobs-per-rank": "jobs_per_rank",
    "help": "help", "version": "version", "trim": "trim", "env": "env",
    "profile": "profile", "arg-sep": "arg_sep", "arg-file-sep": "arg_file_sep",
    "quote": "quote", "eof": "eof", "header": "header", "pipe": "pipe",
    "pipe-part": "pipe_part", "block-size": "block_size", "recend": "recend",
    "recstart": "recstart", "regexp": "regexp", "plus": "plus",
    "extensionreplace": "rpl_.", "basenamereplace": "rpl_/", "dirnamereplace": "rpl_//",
    "output-as-files": "files", "tmpdir": "tmpdir", "basenameextensionreplace": "rpl_/.",
    "seqreplace": "rpl_#", "slotreplace": "rpl_%", "E": "eof", "max-lines": "max_lines",
    "L": "max_lines_x", "X": "fill_X", "m": "fill_m", "xargs": "fill_xargs",
    "max-chars": "max_chars", "show-limits": "show_limits", "rpl": "rpl",
    "round-robin": "round_robin", "parens": "parens",
}
_MULTI = {"arg_file", "env", "profile", "rpl"}
_COUNT = {"verbose"}

_REMOTE = ("sshlogin sshloginfile transfer-file transfer return trc cleanup basefile onall "
           "nonall work-dir controlmaster filter-hosts ssh ssh-delay hgrp rsync-opts "
           "use-cpus-instead-of-cores workdir").split()
# GNU parallel options pardo refuses, with the reason given to the user
REFUSED = {name: ("runs commands on other machines over ssh; pardo's way across machines "
                  "is --mpi (its own issue)") for name in _REMOTE}
REFUSED.update({
    "tmux": "needs tmux windows per job; pardo shows output with --group/--line-buffer",
    "tmux-pane": "needs tmux windows per job; pardo shows output with --group/--line-buffer",
    "sql": "the SQL job queue is not in pardo", "sql-master": "the SQL job queue is not in pardo",
    "sql-worker": "the SQL job queue is not in pardo",
    "sql-and-worker": "the SQL job queue is not in pardo",
    "semaphore": "pardo has no semaphore mode",
    "compress": "compresses its temporary output files (lz4, gzip...); pardo's spool files "
                "are not compressed: drop --compress, the output is the same",
    "use-compress-program": "compresses its temporary output files; pardo's spool files are not "
                            "compressed: drop it, the output is the same",
    "use-decompress-program": "compresses its temporary output files; pardo's spool files are "
                              "not compressed: drop it, the output is the same",
})


def _resolve_long(word):
    """(canonical, type) of a long option name, exact or an unambiguous prefix."""
    if word in _ALL:
        return _ALL[word]
    hits = [n for n in _ALL if n.startswith(word)]
    canon = {_ALL[n][0] for n in hits}
    if len(canon) == 1:
        return _ALL[hits[0]]
    if len(canon) > 1:
        raise UsageError(f"option --{word} is ambiguous ("
                         + ", ".join(f"--{h}" for h in sorted(hits)) + ")")
    close = difflib.get_close_matches(word, [n for n in _ALL if len(n) > 1], n=1, cutoff=0.8)
    hint = f"; did you mean --{close[0]}?" if close else "; see pardo run --help"
    raise UsageError(f"unknown option --{word}{hint}")


def _takes_optional(kind, word):
    """Getopt::Long's rule: an optional value is taken from the next word only when that
    word does not look like an option (and, for a number, is a number)."""
    if word is None or (word.startswith("-") and word != "-"):
        return False
    if kind == ":f":
        return re.fullmatch(r"[-+]?\d+(\.\d+)?", word) is not None
    return True


def _value_from_next(kind, nxt, spelled):
    """(value, words used) for an option whose value was not attached to it: the next word
    for a required value, for an optional one only when it qualifies, else ""."""
    if kind[0] == "=":
        if nxt is None:
            raise UsageError(f"option {spelled} needs a value")
        return nxt, 1
    if _takes_optional(kind, nxt):
        return nxt, 1
    return "", 0


def _store(opts, canon, value, spelled):
    if canon in REFUSED:
        raise UsageError(f"{spelled} is not supported: GNU parallel's {spelled} "
                         f"{REFUSED[canon]}")
    key = OPTIONS.get(canon)
    if key is None:
        same = spelled == f"--{canon}"
        raise UsageError(f"{spelled}{'' if same else f' (--{canon})'}: this option of GNU "
                         "parallel is not supported by pardo run")
    if key in _MULTI:
        opts.setdefault(key, []).append(value)
    elif key in _COUNT:
        opts[key] = opts.get(key, 0) + 1
    else:
        opts[key] = value


def parse_options(argv, opts=None):
    """Parse the options at the head of *argv* into *opts*; return the index of the first
    word that is not an option. Raises UsageError."""
    opts = {} if opts is None else opts
    i = 0
    n = len(argv)
    while i < n:
        a = argv[i]
        if a == "--":
            return i + 1
        if not a.startswith("-") or a == "-" or a.startswith(":::"):
            return i
        nxt = argv[i + 1] if i + 1 < n else None
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            canon, kind = _resolve_long(name)
            spelled = f"--{name}"
            if not kind:
                if eq:
                    raise UsageError(f"option {spelled} takes no value")
                val = True
            elif not eq:
                val, used = _value_from_next(kind, nxt, spelled)
                i += used
            _store(opts, canon, val, spelled)
            i += 1
            continue
        # a bundle of single letters
        k = 1
        while k < len(a):
            letter = a[k]
            if letter not in _ALL or len(letter) != 1:
                raise UsageError(f"unknown option -{letter}"
                                 + (f" (in {a})" if len(a) > 2 else "")
                                 + "; see pardo run --help")
            canon, kind = _ALL[letter]
            rest = a[k + 1:]
            if not kind:
                _store(opts, canon, True, f"-{letter}")
                k += 1
                continue
            if rest and (kind[0] == "=" or kind != ":f"
                         or re.fullmatch(r"[-+]?\d+(\.\d+)?", rest)):
                val = rest
            elif rest:
                raise UsageError(f"option -{letter}: {rest!r} is not a number")
            else:
                val, used = _value_from_next(kind, nxt, f"-{letter}")
                i += used
            _store(opts, canon, val, f"-{letter}")
            break
        i += 1
    return i
