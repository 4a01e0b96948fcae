"""pardo: run commands and Python callables on every core, with deadlines that kill
whole process trees, results that are recorded, and runs that can be resumed.

The public surface is exactly ``__all__``; everything else is private and may change.
Heavy or optional parts (the pool, the batch runner) are imported on first use.
"""

from ._errors import (
    IsolationUnavailable,
    PardoError,
    StoreError,
    StoreMismatch,
    TaskCrashed,
    TaskError,
    TaskTimeout,
)
from ._lazy import lazy_getattr as _lazy_getattr
from ._result import Result, Status
from ._run import DEVNULL, INHERIT, STDOUT, ResultQueue, Task, run, run_async, spawn
from ._supervisor import configure, isolation

__version__ = "0.1.0"

__all__ = [
    "BrokenPool",
    "DEVNULL",
    "INHERIT",
    "STDOUT",
    "IsolationUnavailable",
    "PardoError",
    "Pool",
    "Result",
    "ResultQueue",
    "Status",
    "StoreError",
    "StoreMismatch",
    "Task",
    "TaskCrashed",
    "TaskError",
    "TaskTimeout",
    "configure",
    "isolation",
    "map_commands",
    "progress",
    "releases_gil",
    "run",
    "run_async",
    "spawn",
]

# name -> module that defines it; imported lazily so that `import pardo` stays cheap
__getattr__ = _lazy_getattr(globals(), {
    "map_commands": "._batch",
    "BrokenPool": "._errors",
    "Pool": "._pool",
    "progress": "._pool",
    "releases_gil": "._pool",
})


def __dir__():
    return sorted(set(globals()) | set(__all__))
