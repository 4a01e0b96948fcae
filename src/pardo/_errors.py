"""Every exception pardo raises, in one family under :class:`PardoError`. Each also
subclasses the standard exception users already catch for it (``ValueError``, ``OSError``,
``TimeoutError``, ``BrokenProcessPool``), so ``except ValueError`` keeps working.

Misuse that the standard library reports with its own exceptions is reported the same way,
as a bug in the calling code: ``TypeError`` for an argument of the wrong type,
``RuntimeError`` for a call in the wrong state (submit after shutdown), ``TimeoutError`` when
a wait the caller bounded runs out (``Task.wait(timeout)``).
"""

import threading


class PardoError(Exception):
    """Base class of every exception pardo raises on purpose."""


class UsageError(PardoError, ValueError):
    """A value given to pardo cannot be used: an argument, an option, a command line.
    The message says which value and why; the ``pardo`` command prints it on one line."""


class BatchError(UsageError):
    """A batch option (``-j``, ``--timeout``, ``--halt``...) has a value that cannot be used."""


class TemplateError(UsageError):
    """The command template cannot be used (e.g. it embeds Perl code)."""


class InputError(UsageError):
    """An input source cannot be used (an unreadable file)."""


class StoreError(PardoError):
    """A job store cannot be used (not a pardo store, written by another pardo, a full
    disk...); the message is one line that says why and what to do."""


class StoreMismatch(StoreError):
    """A resume was asked with a command template or inputs other than the store's."""


class MPIUnavailable(PardoError, ImportError):
    """``--mpi`` or ``Pool(backend="mpi")`` cannot have MPI: mpi4py is not installed, or
    the launcher and mpi4py disagree on the world (the message says which, and what to do)."""


class DispatchError(PardoError, RuntimeError):
    """The MPI scheduler on rank 0 cannot go on (no worker rank, or its thread failed)."""


class IsolationUnavailable(PardoError, OSError):
    """The isolation rung that was asked for cannot be had on this machine.

    ``rung`` names it and ``reason`` says why, with what to do about it.
    """

    def __init__(self, rung, reason):
        super().__init__(f"isolation {rung!r} is not available here: {reason}")
        self.rung = rung
        self.reason = reason


class TaskError(PardoError):
    """A task did not succeed. ``result`` is its :class:`pardo.Result` when there is one."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


class TaskTimeout(TaskError, TimeoutError):
    """A task ran past its deadline and its whole process tree was killed."""


class TaskCrashed(TaskError):
    """The worker process running a Python task died (signal, ``os._exit``, OOM kill).

    Carries ``signal`` (number or None), ``exitcode`` (or None) and ``pid`` of the worker.
    """

    def __init__(self, message, result=None, *, signal=None, exitcode=None, pid=None):
        super().__init__(message, result)
        self.signal = signal
        self.exitcode = exitcode
        self.pid = pid


class RemoteTraceback(PardoError):
    """Attached as ``__cause__`` to an exception re-raised from a worker: its traceback
    there, tagged with the worker's pid and host."""

    def __init__(self, tb_text: str, where: str):
        super().__init__(tb_text, where)
        self.tb_text = tb_text
        self.where = where

    def __str__(self):
        return f'\n"""\nTraceback from {self.where}:\n{self.tb_text}"""'


# BrokenPool subclasses concurrent.futures.process.BrokenProcessPool, and importing that
# module costs about as much as the rest of `import pardo` (it pulls in multiprocessing):
# the class is made on first use (module __getattr__), once.
_broken_pool = None
_broken_pool_lock = threading.Lock()


def _make_broken_pool():
    global _broken_pool
    with _broken_pool_lock:
        if _broken_pool is None:
            import concurrent.futures.process

            class BrokenPool(PardoError, concurrent.futures.process.BrokenProcessPool):
                """The pool cannot run tasks any more (its initializer failed, or its workers
                cannot start). Every queued task fails with it, and so does every later
                submit."""

            BrokenPool.__module__ = __name__
            BrokenPool.__qualname__ = "BrokenPool"  # pickled by name, found by __getattr__
            _broken_pool = BrokenPool
    return _broken_pool


def __getattr__(name):
    if name == "BrokenPool":
        return _make_broken_pool()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
