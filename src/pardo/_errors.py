"""The exceptions pardo raises. One base class; standard ones subclassed where users
already catch them (``OSError``, ``TimeoutError``)."""


class PardoError(Exception):
    """Base class of every exception pardo raises on purpose."""


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
