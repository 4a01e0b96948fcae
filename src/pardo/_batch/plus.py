"""GNU parallel's ``--plus`` replacement strings, as Python functions of one value.

GNU defines them as Perl substitutions (``%Global::plus`` in its source); the same
substitutions are written here with Python's ``re``, whose syntax agrees with Perl's for the
patterns these strings take (the text between the braces of ``{#pat}``, ``{/pat/new}``... is
a regular expression in both).

- ``{+/}`` ``{+.}`` ``{+..}`` ``{+...}``: the directory, the last one, two or three extensions;
  ``{..}`` ``{...}`` ``{/..}`` ``{/...}``: the value or its basename without two or three.
  ``{} = {+/}/{/} = {.}.{+.} = {..}.{+..}``...
- ``{##}``: the number of jobs.
- Bash's expansions: ``{:-default}``, ``{:2}``, ``{:2:3}``, ``{#prefix}``, ``{##prefix}``,
  ``{%suffix}``, ``{%%suffix}``, ``{/old/new}``, ``{//old/new}``, ``{/#old/new}``,
  ``{/%old/new}``, ``{^a}``, ``{^^a}``, ``{,A}``, ``{,,A}``.
"""

from __future__ import annotations

import functools
import re

from .._errors import TemplateError

__all__ = ["FIXED_OPS", "BASH_OP", "transform"]

_E = r"\.[^/.]*"  # one extension, as GNU's patterns write it
_FIXED = {
    "+/": lambda v: re.sub(r"/[^/]*$", "", v, count=1) if re.search(r"/[^/]*$", v) else "",
    "+.": lambda v: re.sub(r".*\.", "", v, count=1) if "." in v else "",
    "+..": lambda v: _tail(v, 2),
    "+...": lambda v: _tail(v, 3),
    "..": lambda v: re.sub(_E * 2 + "$", "", v, count=1),
    "...": lambda v: re.sub(_E * 3 + "$", "", v, count=1),
    "/..": lambda v: re.sub(_E * 2 + "$", "", re.sub(r".*/", "", v, count=1), count=1),
    "/...": lambda v: re.sub(_E * 3 + "$", "", re.sub(r".*/", "", v, count=1), count=1),
}
# longest first, so that "+..." is not read as "+." and a stray ".."
FIXED_OPS = sorted(_FIXED, key=len, reverse=True)
# The bash-like strings: what follows "{" up to the closing "}" (GNU's own patterns).
BASH_OP = (r":-[^}]+?|:\d+?:\d+?|:\d+?|##[^#}][^}]*?|#[^#}][^}]*?|%%[^}]+?|%[^}]+?"
           r"|//[^}]+?/[^}]*?|/#[^}]+?/[^}]*?|/%[^}]+?/[^}]*?|/[^#%}/]+?/[^}]*?"
           r"|\^\^[^}]+?|\^[^}]+?|,,[^}]+?|,[^}]+?")


def _tail(v, n):
    m = re.match(r".*\.([^/.]*" + r"\.[^/.]*" * (n - 1) + r")$", v)
    return m.group(1) if m else ""


def _ungreedy(p):
    # GNU's make_regexp_ungreedy: every * and + becomes lazy
    return re.sub(r"([*+])(?!\?)", r"\1?", p)


@functools.cache
def transform(op: str):
    """The function of a value that a --plus replacement string ``{op}`` stands for."""
    if op in _FIXED:
        return _FIXED[op]
    if op.startswith(":-"):
        default = op[2:]
        return lambda v: v or default
    m = re.fullmatch(r":(\d+):(\d+)", op)
    if m:
        a, n = int(m.group(1)), int(m.group(2))
        return lambda v: v[a:a + n]
    m = re.fullmatch(r":(\d+)", op)
    if m:
        a = int(m.group(1))
        return lambda v: v[a:]
    if op.startswith("##"):
        pat = re.compile("^" + op[2:])
        return lambda v: pat.sub("", v, count=1)
    if op.startswith("#"):
        pat = re.compile("^" + _ungreedy(op[1:]) + "(.*)")
        return lambda v: pat.sub(r"\1", v, count=1)
    if op.startswith("%%"):
        pat = re.compile(op[2:] + "$")
        return lambda v: pat.sub("", v, count=1)
    if op.startswith("%"):
        pat = re.compile("(.*)" + _ungreedy(op[1:]) + "$")
        return lambda v: pat.sub(r"\1", v, count=1)
    for prefix, anchor, count in (("//", "{}", 0), ("/#", "^{}", 0), ("/%", "{}$", 0),
                                  ("/", "{}", 1)):
        if op.startswith(prefix):
            old, _, new = op[len(prefix):].partition("/")
            pat = re.compile(anchor.format(old))
            return lambda v, pat=pat, new=new, count=count: pat.sub(
                lambda _m, new=new: new, v, count=count)
    for prefix, fn, count in (("^^", str.upper, 0), ("^", str.upper, 1), (",,", str.lower, 0),
                              (",", str.lower, 1)):
        if op.startswith(prefix):
            pat = re.compile(("" if count == 0 else "^") + "(" + op[len(prefix):] + ")")
            return lambda v, pat=pat, fn=fn, count=count: pat.sub(
                lambda m, fn=fn: fn(m.group(1)), v, count=count)
    raise TemplateError(f"unknown --plus replacement string {{{op}}}")
