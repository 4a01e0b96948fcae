"""The pool part: :class:`pardo.Pool`, Python callables on every core with per-task deadlines.

- ``executor.py``: :class:`Pool`, the ``concurrent.futures.Executor`` users see.
- ``map_run.py``: one ``Pool.map`` call: lazy input, a window of chunks, ordered output.
- ``items.py``: the WorkItem (a chunk of calls), the sinks that settle it, batch sizing.
- ``process.py``: the process backend: the manager thread, dispatch, deaths.
- ``worker_process.py``: one worker process as the parent sees it: pipes, watch record.
- ``worker.py``: the program a worker process runs.
- ``wire.py``: the frames between them, and the watch record's layout.
- ``shm.py``: pickling for the wire, large buffers through shared memory.
- ``failures.py``: the errors a task's failure becomes, on either side.
- ``thread.py``: the thread backend.
- ``channel.py``: :func:`pardo.progress`, from a task to its caller.
- ``progress_bar.py``: ``Pool.map(progress=True)``.
- ``gil.py``: :func:`pardo.releases_gil`.

Other parts use the names exported here, and no others. They are imported on first use: a
worker process starts ``python -m pardo._pool.worker``, which must not pay for the executor.
"""

from .._lazy import lazy_getattr as _lazy_getattr

__all__ = ["GilVerdict", "Pool", "progress", "releases_gil"]

__getattr__ = _lazy_getattr(globals(), {"Pool": ".executor", "GilVerdict": ".gil",
                                       "releases_gil": ".gil", "progress": ".channel"})
