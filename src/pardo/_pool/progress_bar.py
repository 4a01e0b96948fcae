"""The live progress bar of ``Pool.map(..., progress=True)``: a thin view over a count.

The pool only reports how many tasks are settled; rich renders the bar from that number on
its own refresh thread, at a bounded rate, and only when stderr is a terminal.
"""

from __future__ import annotations

import sys


class _Bar:
    def __init__(self, progress, task_id):
        self._progress = progress
        self._task_id = task_id
        self._closed = False

    def update(self, completed: int) -> None:
        if not self._closed:
            self._progress.update(self._task_id, completed=completed)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._progress.refresh()
            self._progress.stop()


def open_bar(total, description="tasks", console=None):
    """Start a bar for ``total`` tasks (None: unknown). Returns None, and draws nothing,
    when no console is given and stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if console is None:
        if not sys.stderr.isatty():
            return None
        console = Console(file=sys.stderr)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        refresh_per_second=8,
    )
    progress.start()
    return _Bar(progress, progress.add_task(description, total=total))
