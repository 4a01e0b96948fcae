"""What a batch run needs from its store: open it for writing before any task starts, say
which tasks a resume skips (after checking that it is the same run), and record each
finished attempt.

The batch runner records into a :class:`RunStore` it is given (a sink: nothing flows back
from the store to the runner but a stop when the store fails); whoever opens it (the CLI,
``map_commands(store=)``) decides the mode and ends the store's run.
"""

from __future__ import annotations

import os

from .._errors import StoreError
from ._writer import StoreSink

__all__ = ["RunStore", "inputs_identity", "open_for_map"]


def _sha256(data: bytes):
    """hashlib.sha256, from CPython's own module when there is one: hashlib loads OpenSSL,
    several ms of a run's start-up."""
    try:
        from _sha2 import sha256  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256
        except ImportError:
            from hashlib import sha256
    return sha256(data)


def inputs_identity(sources) -> list:
    """The inputs' identity of a run: ``:::`` values by a digest of their values (and
    their count), files by path. A file's contents may grow between runs (GNU parallel's
    way of adding work to a resumed run), so files are checked task by task instead."""
    out = []
    for s in sources:
        if s.values is not None:
            h = _sha256("\0".join(map(str, s.values)).encode("utf-8", "surrogatepass"))
            out.append({"values": len(s.values), "sha256": h.hexdigest()[:16],
                        "first": list(map(str, s.values[:3])),
                        "last": str(s.values[-1]) if s.values else None,
                        "linked": bool(s.linked)})
        else:
            out.append({"file": s.path if s.path == "-" else os.path.abspath(s.path),
                        "linked": bool(s.linked)})
    return out


class RunStore:
    """A store opened for one run.

    Args:
        path: the store file.
        template: the command template as given.
        inputs: the inputs' identity (:func:`inputs_identity`).
        mode: None (a new run: the store must hold no completed task), ``"resume"``,
            ``"resume-failed"`` or ``"retry-failed"``.
        force: resume even if the template or inputs differ.
        options: the run's options, recorded.
        on_error: called (writer thread) with the StoreError that stopped the writer.
        max_output: bytes of each output stream kept at most (``--max-output``).
    """

    def __init__(self, path, *, template, inputs, mode=None, force=False, options=None,
                 on_error=None, rung=None, max_output=None):
        self.path = path
        self.mode = mode
        self.force = force
        self.state = None
        self.failed = []
        self.sink = StoreSink(path, on_error=on_error, max_output=max_output)
        self._put = self.sink.put
        try:
            if mode is not None:
                from ._read import StoreReader

                with StoreReader(path) as rd:
                    self.state = rd.resume_state()
                    if mode == "retry-failed":
                        self.failed = list(rd.failed_tasks())
                if mode != "retry-failed":
                    # (--retry-failed runs the recorded commands: nothing to compare)
                    self.state.check_run(template, inputs, force=force)
            elif not force:
                # a new run reads no task (the writer's tallies count them): a fresh
                # store costs a run no reader and no query of its own
                done = self.sink.completed_tasks()
                if done:
                    raise StoreError(
                        f"store {path} already holds {done} completed tasks; --resume (or "
                        "--resume-failed, --retry-failed) continues that run, --force "
                        "starts over in it, or give another store")
            options = dict(options or {}, **({"mode": mode} if mode else {}))
            self.sink.run_started(template=template, options=options, inputs=inputs,
                                  rung=rung, supersede=mode in ("resume-failed",
                                                                "retry-failed") or force)
        except BaseException:
            self.sink.close()
            raise

    def skip(self):
        """Seqs to leave out (a container), or None."""
        if self.mode in ("resume", "resume-failed"):
            return self.state.skip(self.mode)
        return None

    def checked(self, groups):
        """Pass input groups through, refusing a resume whose task inputs differ."""
        if self.mode not in ("resume", "resume-failed") or self.force:
            return groups  # nothing to check: no generator between the runner and them
        return self._checked(groups)

    def _checked(self, groups):
        st = self.state
        for seq, args in enumerate(groups, 1):
            st.check_task(seq, args)
            yield args

    def attempt(self, job, result, command, *, final, cpus=None, files=None):
        """Record one finished attempt of *job*. A task cancelled by pardo itself (Ctrl-C,
        --halt now) did not complete: it gets no record and runs again on resume. A result
        from another machine (``pardo run --mpi``) carries where it ran as ``host``.
        *files*: its spooled streams, as :meth:`StoreSink.task_done` takes them (the
        store closes them, recorded or not)."""
        # (called once per task by the batch runner: the sink's hand-over is called
        # directly, with the record as task_done() would make it)
        if final and result.status == "cancelled":
            for f in files or ():
                if f is not None:
                    os.close(f[0])
            return
        self._put((job.seq, job.args, command, job.attempts, final, result, job.slot, cpus,
                   getattr(result, "host", None), files))

    def stop_on_error(self, stop):
        """Call *stop()* (from the writer thread) if the store fails mid-run: the batch
        runner passes its own stop, so that no new task starts."""
        self.sink._on_error = lambda e: stop()

    @property
    def error(self):
        return self.sink.error

    def end(self, how):
        self.sink.run_ended(how)


def open_for_map(path: str, template: str, *, mode=None, force=False,
                 options=None) -> RunStore:
    """The store of a ``map_commands(..., store=path)`` run: a new run (*mode* None) or a
    resume (``"resume"``, ``"resume-failed"``, ``"retry-failed"``). Python inputs have no
    identity to record up front (any iterable, perhaps a generator), so a resume checks
    them task by task, as it does the lines of an input file."""
    from .._supervisor import isolation

    return RunStore(path, template=template, inputs=None, mode=mode, force=force,
                    options=options, rung=isolation())

