"""The batch runner's entry point for Python code: :func:`pardo.map_commands`."""

from __future__ import annotations

import os

from .._errors import UsageError
from .inputs import arg_groups, count_jobs
from .jobs import RESUME_MODES
from .options import compile_colsep
from .scheduler import Batch
from .template import Template


def map_commands(command, inputs=(), *, jobs=None, timeout=None, kill_grace=2.0, retries=1,
                 halt=None, keep_order=False, max_args=None, colsep=None, replace="{}",
                 pin=False, delay=0.0, nice=None, memory_limit=None, env=None, cwd=None,
                 max_output=None, stdout=None, stderr=None, results=None, store=None,
                 resume=False, force=False):
    """Run a command template once per input, in parallel, and yield each task's Result.

    The template speaks GNU parallel: ``command`` is shell code in which ``{}`` stands for
    the input (also ``{.}`` ``{/}`` ``{//}`` ``{/.}`` ``{#}`` ``{%}``, and ``{1}`` ``{2}`` ...
    for the columns of a tuple input). Values are shell-quoted, so an input is always data;
    when the command needs nothing of a shell it is exec'd directly. ``{}`` is appended when
    the command names no replacement string.

    Inputs are consumed lazily, one per free slot, so an input of any length streams::

        for r in pardo.map_commands("gzip -9 {}", pathlib.Path(".").glob("*.log"),
                                    timeout=60, jobs=8):
            print(r.inputs[0], r.status)

    Args:
        command: the template, a str (or a list of words, joined by spaces).
        inputs: an iterable of values (str, bytes, paths, numbers) or of tuples of values.
        jobs: parallel slots; default the CPUs this process may run on. GNU forms such as
            ``"50%"`` or ``"+1"`` are accepted.
        timeout: per-task deadline in seconds, or ``"N%"`` of the median runtime of
            successful tasks. The whole process tree of a late task is killed.
        kill_grace: seconds between SIGTERM and SIGKILL when a deadline fires.
        retries: attempts per task (GNU's ``--retries``: 3 means up to 3 runs).
        halt: GNU's ``--halt`` policy, e.g. ``"now,fail=1"`` or ``"soon,success=50%"``.
        keep_order: yield in input order instead of completion order.
        max_args: GNU's ``-N``: that many inputs per command.
        colsep: regex splitting each input value into columns ``{1}`` ``{2}`` ...
        pin: run slot i on its own CPU (for benchmark harnesses).
        delay: minimum seconds between two task starts.
        nice, memory_limit, env, cwd, max_output, stdout, stderr: passed to
            :func:`pardo.spawn` for every task (default: output captured in the Result).
        results: a directory to save each task's output in, laid out as GNU's ``--results``.
        store: a job store file (SQLite) recording the run and every task attempt; see
            ``pardo status``. Unless *resume* or *force* is given, it must not hold
            completed tasks already.
        resume: continue the run recorded in *store*, as ``pardo run``'s options do:
            ``True`` (or ``"resume"``) runs only the tasks without a completion record;
            ``"resume-failed"`` also runs again the ones that failed or timed out;
            ``"retry-failed"`` runs only those, with their recorded commands (*inputs*
            is then not read). A task is its input number and its values: a resume
            with another command template, or with an input whose value differs from
            the recorded one, raises :class:`pardo.StoreMismatch` before any task
            starts, unless *force*. More inputs than before are new tasks.
        force: resume even with another template or other inputs; without *resume*,
            start a new run in a store that already holds one.

    Yields:
        :class:`pardo.Result`, with extra attributes ``seq`` (1-based input number),
        ``slot``, ``inputs`` (the tuple of values), ``attempts`` and ``job``. A resume
        yields only the tasks it runs. Closing the generator early kills the tasks still
        running.

    Raises:
        pardo.StoreError: the store cannot be written, holds a run already, or failed
            mid-run (a full disk); :class:`pardo.StoreMismatch` (a StoreError): a resume
            of another run.
    """
    if isinstance(inputs, (str, bytes)):
        raise TypeError("inputs must be an iterable of values (a str is not: wrap it in a list)")
    words = [command] if isinstance(command, str) else list(command)
    template = Template(words, replace=replace, context=max_args is not None)
    if colsep is not None:
        compile_colsep(colsep)  # a bad one fails here, before any task
    mode = _resume_mode(resume)
    if store is None and (mode is not None or force):
        raise UsageError("resume= and force= continue a run recorded in a job store: "
                         "give store=FILE")
    run_store = None
    if store is not None:
        from .._store import open_for_map

        options = {k: v for k, v in (("jobs", jobs), ("timeout", timeout),
                                     ("retries", retries), ("halt", halt),
                                     ("max_args", max_args), ("colsep", colsep))
                   if v is not None and v != 1}
        run_store = open_for_map(os.fspath(store), " ".join(map(str, words)), mode=mode,
                                 force=bool(force), options=_jsonable(options))
    try:
        batch = Batch(template, arg_groups(inputs, colsep=colsep, max_args=max_args),
                      jobs=jobs, timeout=timeout, kill_grace=kill_grace, retries=retries,
                      halt=halt, keep_order=keep_order, pin=pin, delay=delay, nice=nice,
                      memory_limit=memory_limit, env=env, cwd=cwd, max_output=max_output,
                      stdout=stdout, stderr=stderr, results=results,
                      total=count_jobs(inputs, max_args), store=run_store, resume=mode)
    except BaseException as e:  # an option refused: the store's run ends before a task
        if run_store is not None:
            run_store.end(f"stopped: {e}")
        raise
    if run_store is None:
        return iter(batch)
    return _stored(batch, run_store)


def _resume_mode(resume):
    """map_commands' ``resume=`` as the batch's mode (the CLI option's name), or None."""
    if resume is None or resume is False:
        return None
    if resume is True:
        return "resume"
    if resume in RESUME_MODES:
        return resume
    raise UsageError(f"resume={resume!r}: give True (or 'resume'), 'resume-failed' or "
                     "'retry-failed'")


def _jsonable(options):
    return {k: v if isinstance(v, (int, float, str)) else str(v) for k, v in options.items()}


def _stored(batch, store):
    """Iterate a batch that records into a store; end the store's run however it ends.
    A store that fails mid-run (a full disk) stops the batch, and the error is raised."""
    how = "stopped"
    try:
        yield from batch
        how = "completed" if store.error is None else f"stopped: {store.error}"
    finally:
        store.end(how)
    if store.error is not None:
        raise store.error
