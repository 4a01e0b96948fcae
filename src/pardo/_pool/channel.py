"""The channel a running task talks through: :func:`pardo.progress`.

A task does not know which backend runs it. The backend installs an *emitter* for the
duration of each task — per thread for ``backend="thread"``, per process in a pool worker —
and :func:`emit` hands the value to it. Outside a pool task there is no emitter and the value
is dropped, so functions that report progress also run unchanged outside a pool.
"""

from __future__ import annotations

import threading

_local = threading.local()

# Set once by a pool worker process (pardo._pool.worker): there every task runs on the main
# thread, so one process-wide emitter is enough and costs no thread-local lookup.
_process_emitter = None


def set_thread_emitter(emitter):
    """Install ``emitter(value)`` for tasks on the calling thread (None removes it)."""
    _local.emitter = emitter


def set_process_emitter(emitter):
    """Install ``emitter(value)`` for every task of this (worker) process."""
    global _process_emitter
    _process_emitter = emitter


def progress(value=None) -> bool:
    """Send ``value`` from the running pool task to the parent's ``on_progress`` callback.

    Call it from inside a task, as often as useful; each call is delivered in order, promptly
    (a worker process writes it at once). Outside a pool task it does nothing, so a function
    that reports progress runs unchanged on its own.

    Returns:
        True if the value was sent, False when not running inside a pool task.
    """
    emitter = getattr(_local, "emitter", None) or _process_emitter
    if emitter is None:
        return False
    emitter(value)
    return True
