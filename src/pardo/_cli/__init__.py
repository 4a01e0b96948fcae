"""The ``pardo`` command: a thin view over the library.

    pardo run ...     the batch runner (GNU parallel's language)
    pardo doctor      which isolation rung is in force, and why
    pardo demo        a small built-in batch that shows what pardo does
    pardo status / show / export / report   read a job store
"""

from __future__ import annotations

import os
import re
import sys

_COMMANDS = {
    "run": ("pardo._cli.run", "run commands in parallel (GNU parallel's syntax)"),
    "doctor": ("pardo._cli.doctor", "report the isolation rung and kernel features"),
    "demo": ("pardo._cli.demo", "run a small built-in batch"),
    "status": ("pardo._cli.status", "how a run in a job store went (or goes: --watch)"),
    "show": ("pardo._cli.show", "one task of a job store in full, with its output"),
    "export": ("pardo._cli.export", "a job store as JSON lines, CSV or a joblog"),
    "report": ("pardo._cli.report", "a job store as one self-contained HTML page"),
}


def help_text(doc: str) -> str:
    """A docstring as a person reads it in a terminal: without reStructuredText markup
    (``code``, :class:`name`)."""
    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return doc.replace("``", "")


def _usage() -> str:
    lines = ["usage: pardo COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in _COMMANDS.items()]
    lines += ["", "pardo COMMAND --help shows the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from .. import __version__

        print(f"pardo {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(_COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"pardo: unknown command '{name}'{hint}; try 'pardo --help'", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(_COMMANDS[name][0])
    try:
        rc = module.main(rest)
        sys.stdout.flush()  # a buffered stdout fails here, not later at exit
        return rc
    except BrokenPipeError:
        # stdout was closed early (`pardo doctor | head`): stop quietly, as other tools do,
        # and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
