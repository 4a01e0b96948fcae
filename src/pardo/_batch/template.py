"""Command templates: GNU parallel's replacement strings, shell quoting, and the choice
between running a command through ``/bin/sh -c`` and exec'ing it directly.

A template is the command words joined by spaces, as in GNU parallel: the command is shell
code and every value put into it is shell-quoted, so a value is always data. The template is
parsed once into *groups* (runs of non-blank text) of literal text and replacement fields;
rendering a task is then a walk over those few parts.

Two renderings come out of one template:

- :meth:`Template.command` — the shell command line, byte for byte what GNU parallel builds
  (it is what ``--dry-run`` prints, what the joblog records and what ``/bin/sh -c`` runs);
- :meth:`Template.argv` — the argv the shell would end up exec'ing, computed without a shell,
  or None when the command needs one. It is only offered when every literal character of the
  template is inert for ``sh`` (no quotes, ``$``, globs, redirections, ``;``...), so word
  splitting and quote removal are the only things the shell would do; and only when the
  program is not a shell builtin whose behaviour could differ from the program on PATH.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._errors import TemplateError

__all__ = ["Template", "shell_quote", "perl_dirname"]


# GNU parallel's shell_quote_scalar_default: strings made of these characters only are left
# bare, anything else is wrapped in single quotes (with ' written as '"'"').
_NEEDS_QUOTE = re.compile(r"[^-_.+a-zA-Z0-9/]").search


def shell_quote(value: str) -> str:
    """Quote *value* for a POSIX shell exactly as GNU parallel does."""
    if _NEEDS_QUOTE(value):
        q = "'" + value.replace("'", "'\"'\"'") + "'"
        # GNU strips the empty '' left at either end when the value starts/ends with a quote
        if q.startswith("''"):
            q = q[2:]
        if q.endswith("''"):
            q = q[:-2]
        return q
    if value == "":
        return "''"
    return value


# The transformations of GNU parallel's default replacement strings, same regexes (Python's
# `$` and `.` treat a trailing newline like Perl's do).
_strip_ext = re.compile(r"\.[^/.]*$").sub
_strip_dir = re.compile(r".*/").sub


def _perl_fileparse(path):
    i = path.rfind("/")
    if i < 0:
        return "./", path
    return path[: i + 1], path[i + 1 :]


def _perl_strip_sep(d):
    return d.rstrip("/") or ("/" if d else "")


def perl_dirname(path: str) -> str:
    """File::Basename::dirname on Unix, which ``{//}`` uses (``a`` -> ``.``, ``a/b/`` -> ``a``)."""
    d, b = _perl_fileparse(path)
    d = _perl_strip_sep(d)
    if not b:
        d, b = _perl_fileparse(d)
        d = _perl_strip_sep(d)
    return d


def _basename(v):
    return _strip_dir("", v, count=1)


_TRANSFORMS = {
    "": lambda v: v,
    ".": lambda v: _strip_ext("", v, count=1),
    "/": _basename,
    "//": perl_dirname,
    "/.": lambda v: _strip_ext("", _basename(v), count=1),
}


def _rpl_code(code, groups):
    """An --rpl expression for one match of its TAG: ``$$1``... name the TAG's groups, set
    first as perl strings (GNU: ``$_pAr_gRp1 = "..."``)."""
    body = re.sub(r"\$\$(\d+)", r"$_pAr_gRp\1", code)
    sets = "".join(f'$_pAr_gRp{i} = "{_perl_quote(g)}";'
                   for i, g in enumerate(groups, 1) if g is not None)
    return sets + body


def _perl_quote(s):
    return re.sub(r'[\\"$@]', lambda m: "\\" + m.group(), s)


@dataclass(frozen=True, slots=True)
class Field:
    """One replacement string in a template.

    Attributes:
        pos: 1-based (or negative, from the end) position for ``{n}`` forms, else None.
        op: the transformation: "" "." "/" "//" "/." or "#" (job number) "%" (slot).
    """

    pos: int | None
    op: str


# dash's builtins and keywords: a command whose program is one of these must go through the
# shell, which would run the builtin rather than a program of the same name.
_SHELL_WORDS = frozenset(
    ". : [ alias bg break cd chdir command continue echo eval exec exit export false fc fg "
    "getopts hash jobs kill local printf pwd read readonly return set shift test times trap "
    "true type ulimit umask unalias unset wait ! case do done elif else esac fi for if in "
    "then until while { } [[ ]] function select source let declare typeset".split()
)
# Fields that do not take an input value: {#} the job number, {%} the slot, {##} (--plus)
# the number of jobs.
_NON_INPUT = ("#", "%", "##")
# Builtins that behave exactly like their namesakes on PATH for any arguments.
_SAME_AS_PROGRAM = frozenset({"true", "false"})
# Characters of literal template text that mean nothing to sh inside a word.
_INERT = re.compile(r"[-_.,:=+@%^/A-Za-z0-9 \t]*\Z").match
_BLANK = re.compile(r"[ \t\n]+")


class Template:
    """A parsed command template.

    Args:
        words: the command and its arguments as given (joined by single spaces, like GNU
            parallel). Empty means "each input is itself a command".
        replace: the string that stands for the whole input (``-I``), default ``{}``.
        context: context replacement (GNU parallel turns it on with ``-N``/``-X``): a word
            holding ``{}`` is repeated once per argument instead of the arguments being
            spliced in as separate words.
        quote: whether values are shell-quoted. By default as GNU parallel decides: yes,
            unless the program itself comes from the input. False for text that no shell
            reads (``--tagstring``), where values show as they are.
        quote_words: GNU's ``-q``: every word of the command is shell-quoted once its
            replacement strings are filled in with the values as they are, so the command
            runs without a shell interpreting any of it.
        plus: GNU's ``--plus`` replacement strings (``{+/}``, ``{..}``, ``{##}``, ``{:2}``...).
        total: the number of jobs, for ``{##}``.
        append: append ``{}`` when the words hold no replacement string (a command);
            False for a ``--tagstring``, which GNU uses as it is.
    """

    def __init__(self, words, *, replace: str = "{}", context: bool = False,
                 quote: bool | None = None, append: bool = True, quote_words: bool = False,
                 plus: bool = False, total: int | None = None, rpl=(), perl=None):
        text = " ".join(words)
        self._context = context
        self.total = total
        pos_ops, ops = r"|\.|/|//|/\.", r"\.|/|//|/\.|#|%"
        builtin = ["{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}", replace]
        if plus:
            from .plus import BASH_OP, FIXED_OPS

            fixed = "|".join(re.escape(o) for o in FIXED_OPS)
            pos_ops = "|".join((fixed, pos_ops))
            ops = "|".join((fixed, "##", ops, BASH_OP))
            builtin += ["{" + o + "}" for o in FIXED_OPS] + ["{##}"]
        # {= perl =} and --rpl strings become NUL-delimited marks (argv words hold no NUL)
        # before the words are split at blanks, which perl code may hold
        self.perl = perl
        self.skipped = False  # set by command(): a perl expression called skip()
        text = self._mark_perl(text, rpl, builtin)
        self._field_re = re.compile(
            r"\x00(-?\d+)?P(\d+)\x00|"
            r"\{(-?\d+)(" + pos_ops + r")\}|\{(" + ops + r")\}|(" + re.escape(replace) + ")"
        )
        self.groups = self._parse(text)
        self.appended = append and not any(isinstance(p, Field) for g in self.groups
                                           for p in g)
        if self.appended:
            # GNU appends {} when the command names no replacement string
            self.groups = self._parse(text + " " + replace if text else replace)
        perl_ops = {p.op for g in self.groups for p in g
                    if isinstance(p, Field) and p.op[:1] == "="}
        # {%}, or perl code that may call slot(): the job slot must be known before the
        # task starts
        self.uses_slot = any(
            isinstance(p, Field) and p.op == "%" for g in self.groups if not isinstance(g, str)
            for p in g
        ) or any("slot" in self.perl.expressions[int(op[1:])] for op in perl_ops)
        self.uses_input = any(
            isinstance(p, Field) and p.op not in _NON_INPUT for g in self.groups for p in g
        )
        self.max_position = max(
            (p.pos for g in self.groups for p in g if isinstance(p, Field) and p.pos),
            default=0,
        )
        # GNU: when the program name itself comes from a replacement string, nothing is
        # quoted (so "parallel ::: 'echo a'" runs `echo a`).
        first = re.match(r"[^ \t\n=]*", text or replace).group()
        self.quote = self._field_re.search(first) is None if quote is None else quote
        literal = "".join(p for g in self.groups for p in g if isinstance(p, str))
        # perl fields are rendered once per job, by command() (which notes a skip())
        self._direct = (self.quote and _INERT(literal) is not None and not self._assigns()
                        and not perl_ops)
        self.has_perl = bool(perl_ops)
        self._quote_words = None
        if quote_words:
            # one template per word, rendered with raw values, then quoted whole
            self._direct = False
            self._quote_words = [Template([w], replace=replace, context=context, quote=False,
                                          append=False, plus=plus, total=total, rpl=rpl,
                                          perl=perl) for w in words]
            if not any(t.uses_input for t in self._quote_words):
                self._quote_words.append(Template([replace], replace=replace, context=context,
                                                  quote=False))
            self.has_perl = any(t.has_perl for t in self._quote_words)
            self.uses_slot = self.uses_slot or any(t.uses_slot for t in self._quote_words)
        # The usual command, literal words around one plain {} that takes every input:
        # command() is then the literal text and the values, quoted and joined by spaces
        # (what the general rendering makes of it, context replacement included), without
        # walking the groups. A job store renders every task's command line.
        self._around = None
        fields = [i for i, g in enumerate(self.groups)
                  if not isinstance(g, str) and any(isinstance(p, Field) for p in g)]
        if (self._quote_words is None and not perl_ops and len(fields) == 1
                and self.groups[fields[0]] == (Field(None, ""),)):
            i = fields[0]
            self._around = tuple("".join("".join(g) for g in part)
                                 for part in (self.groups[:i], self.groups[i + 1:]))

    def _mark_perl(self, text, rpl, builtin):
        """Replace ``{=...=}``, ``{=N ...=}`` and every ``--rpl`` string by a mark naming
        its perl code (GNU's order: the longest string first, built-in ones included, so a
        short --rpl does not eat into a longer built-in string)."""
        left, right = self.perl.parens if self.perl is not None else ("{=", "=}")
        lq, rq = re.escape(left), re.escape(right)
        if not (rpl or re.search(lq + ".*" + rq, text, flags=re.S)):
            return text
        if self.perl is None:
            raise TemplateError("perl expressions {= ... =} and --rpl need the run's perl "
                                "(pardo run); use a shell command instead")

        def mark(code, pos=None):
            m = re.match(r"(-?\d+) *", code) if pos is None else None
            if m:
                pos, code = m.group(1), code[m.end():]
            return "\x00" + (str(pos) if pos else "") + "P" + str(self.perl.add(code)) + \
                "\x00"

        # GNU matches the shortest {= ... =} that holds no other {=
        text = re.sub(lq + "((?:(?!" + lq + "|" + rq + ").)*?)" + rq,
                      lambda m: mark(m.group(1)), text, flags=re.S)
        if not rpl:
            return text
        tags = {}
        for spec in rpl:
            tag, _, code = spec.partition(" ")
            if not tag:
                raise TemplateError(f"--rpl {spec!r}: give 'TAG perl-expression'")
            tags[tag] = code
        for name in builtin:
            tags.setdefault(name, None)
        # segments: [text, free?]; marks and built-in strings are not searched again
        segs = [[seg, i % 2 == 0] for i, seg in enumerate(re.split("(\x00[^\x00]*\x00)", text))]
        for tag in sorted(tags, key=len, reverse=True):
            code = tags[tag]
            m = re.fullmatch(r"([^(]*)(\(.*\))?([^)]*)", tag, flags=re.S)
            prefix, grp, postfix = (m.group(1), m.group(2) or "", m.group(3)) if m else \
                (tag, "", "")
            try:
                pats = [(re.compile(re.escape(prefix) + grp + re.escape(postfix), re.S), False)]
                if tag.startswith("{"):
                    pats.append((re.compile(r"\{(-?\d+)\s*" + re.escape(prefix[1:]) + grp +
                                            re.escape(postfix), re.S), True))
            except re.error as e:
                raise TemplateError(f"--rpl {tag!r}: its group is not a regular expression: "
                                    f"{e}") from None
            for pat, positional in pats:
                out = []
                for seg, free in segs:
                    if not free:
                        out.append([seg, free])
                        continue
                    pos = 0
                    for hit in pat.finditer(seg):
                        if hit.end() == hit.start():
                            continue
                        out.append([seg[pos:hit.start()], True])
                        if code is None:
                            out.append([hit.group(), False])
                        else:
                            groups = hit.groups()[1:] if positional else hit.groups()
                            out.append([mark(_rpl_code(code, groups),
                                             hit.group(1) if positional else ""), False])
                        pos = hit.end()
                    out.append([seg[pos:], True])
                segs = out
        return "".join(seg for seg, _ in segs)

    def _parse(self, text):
        groups = []
        pos = 0
        for m in _BLANK.finditer(text):
            if m.start() > pos:
                groups.append(self._parse_word(text[pos : m.start()]))
            groups.append(m.group())  # blanks are kept verbatim, as a plain str
            pos = m.end()
        if pos < len(text):
            groups.append(self._parse_word(text[pos:]))
        return groups

    def _parse_word(self, word):
        parts = []
        pos = 0
        for m in self._field_re.finditer(word):
            if m.start() > pos:
                parts.append(word[pos : m.start()])
            if m.group(2) is not None:
                n = int(m.group(1)) if m.group(1) else 0
                parts.append(Field(n if n else None, "=" + m.group(2)))
            elif m.group(3) is not None:
                n = int(m.group(3))
                parts.append(Field(n if n else None, m.group(4)))
            elif m.group(5) is not None:
                parts.append(Field(None, m.group(5)))
            else:
                parts.append(Field(None, ""))
            pos = m.end()
        if pos < len(word):
            parts.append(word[pos:])
        return tuple(parts)

    def mentions(self, text: str) -> bool:
        """True when the literal text of the command holds *text* (``PARALLEL_JOBSLOT``)."""
        return any(text in p for g in self.groups for p in ((g,) if isinstance(g, str) else g)
                   if isinstance(p, str))

    def set_total(self, total: int) -> None:
        """The number of jobs, for ``{##}`` (known once the inputs were counted)."""
        self.total = total
        for t in self._quote_words or ():
            t.total = total

    def _assigns(self):
        # A leading NAME=value word is an assignment for sh, not a program.
        first = next((g for g in self.groups if not isinstance(g, str)), ())
        return bool(first) and isinstance(first[0], str) and "=" in first[0]

    # -- rendering -------------------------------------------------------------------------

    def _perl_value(self, field, value, args, seq, slot, quote):
        text, unquoted, skip = self.perl.evaluate(int(field.op[1:]), value, args, seq, slot,
                                                  self.total)
        self.skipped = self.skipped or skip
        return shell_quote(text) if quote and not unquoted else text

    def _value(self, field, args, seq, slot, quote):
        op = field.op
        if op[:1] == "=":
            pos, n = field.pos, len(args)
            if pos is not None:
                i = pos - 1 if pos > 0 else n + pos
                if not 0 <= i < n:
                    return None
                return self._perl_value(field, args[i], args, seq, slot, quote)
            return [self._perl_value(field, a, args, seq, slot, quote) for a in args]
        if op == "#":
            return str(seq)
        if op == "%":
            return str(slot)
        if op == "##":
            return str(self.total)
        tf = _TRANSFORMS.get(op)
        if tf is None:
            from .plus import transform

            tf = transform(op)
        pos = field.pos
        n = len(args)
        if pos is not None:
            i = pos - 1 if pos > 0 else n + pos
            if not 0 <= i < n:
                return None  # GNU: an argument that does not exist becomes nothing at all
            v = tf(args[i])
            return shell_quote(v) if quote else v
        return [(shell_quote(t) if quote else t) for t in map(tf, args)]

    def value_text(self, field: Field, value: str, quote: bool, seq: int = 1,
                   args=()) -> str:
        """What *field* makes of one input *value* (its transformation, then shell
        quoting when *quote*); for fields that take an input value. A perl field runs
        its code (for job *seq*, whose inputs are *args*)."""
        if field.op[:1] == "=":
            return self._perl_value(field, value, args or (value,), seq, 1, quote)
        tf = _TRANSFORMS.get(field.op)
        if tf is None:
            from .plus import transform

            tf = transform(field.op)
        v = tf(value)
        return shell_quote(v) if quote else v

    def command(self, args, seq: int = 1, slot: int = 1) -> str:
        """The shell command line for one task (what GNU parallel would run).

        Args:
            args: the task's input values, flattened (one per source, times ``-N``).
            seq: the job number (``{#}``); slot: the job slot (``{%}``).
        """
        self.skipped = False
        if self._around is not None:
            before, after = self._around
            if self.quote:
                return before + " ".join([shell_quote(a) for a in args]) + after
            return before + " ".join(args) + after
        if self._quote_words is not None:
            line = " ".join(shell_quote(t.command(args, seq, slot)) for t in self._quote_words)
            self.skipped = any(t.skipped for t in self._quote_words)
            return line
        out = []
        quote = self.quote
        for g in self.groups:
            if isinstance(g, str):
                out.append(g)
                continue
            if self._context and len(args) > 1 and any(
                isinstance(p, Field) and p.pos is None and p.op not in _NON_INPUT for p in g
            ):
                copies = []
                for a in args:
                    copies.append(self._render_group(g, args, (a,), seq, slot, quote))
                out.append(" ".join(copies))
            else:
                out.append(self._render_group(g, args, args, seq, slot, quote))
        return "".join(out)

    def _render_group(self, g, args, current, seq, slot, quote):
        s = []
        for p in g:
            if isinstance(p, str):
                s.append(p)
                continue
            if p.pos is None and p.op not in _NON_INPUT:
                vals = self._value(p, current, seq, slot, quote)
                s.append(" ".join(vals) if vals else ("" if not current else "''"))
            else:
                v = self._value(p, args, seq, slot, quote)
                if v is not None:
                    s.append(v)
        return "".join(s)

    def argv(self, args, seq: int = 1, slot: int = 1):
        """The argv that ``sh -c <command line>`` would exec, or None when a shell is needed.

        Exact because literal text is inert for sh and every value is single-quoted: the
        shell would only split words at blanks and remove the quotes.
        """
        if not self._direct:
            return None
        words = []
        for g in self.groups:
            if isinstance(g, str):
                continue
            if self._context and len(args) > 1 and any(
                isinstance(p, Field) and p.pos is None and p.op not in _NON_INPUT for p in g
            ):
                for a in args:
                    self._argv_group(words, g, args, (a,), seq, slot)
            else:
                self._argv_group(words, g, args, args, seq, slot)
        if not words:
            return None
        prog = words[0]
        if prog in _SHELL_WORDS and prog not in _SAME_AS_PROGRAM:
            if prog != "echo" or any(
                "\\" in w for w in words
            ) or (len(words) > 1 and words[1][:1] == "-"):
                return None
            # sh's echo and /bin/echo agree when no option-like first word and no backslash
        return words

    def _argv_group(self, words, g, args, current, seq, slot):
        cur = None  # None: no word started yet (an unquoted empty expansion makes none)
        for p in g:
            if isinstance(p, str):
                cur = p if cur is None else cur + p
                continue
            if p.pos is None and p.op not in _NON_INPUT:
                vals = self._value(p, current, seq, slot, False)
                if not vals:
                    # GNU: no arguments at all (-N0) expands to nothing
                    continue
                first, *rest = vals
                cur = first if cur is None else cur + first
                for v in rest:
                    words.append(cur)
                    cur = v
            else:
                v = self._value(p, args, seq, slot, False)
                if v is not None:
                    cur = v if cur is None else cur + v
        if cur is not None:
            words.append(cur)
