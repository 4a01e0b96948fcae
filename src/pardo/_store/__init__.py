"""The store part: records of finished tasks, in two formats.

- ``joblog.py``: GNU parallel's joblog, which the batch runner writes and reads back to
  resume.
- The job store, every task attempt of a run in SQLite: ``_db.py`` (opening, the schema,
  the writer lock, network filesystems), ``_writer.py`` (:class:`StoreSink`, one writer
  thread), ``_read.py`` (:class:`StoreReader`, the resume query), ``_runlink.py``
  (:class:`RunStore`, what a batch run records into), and its readers' views:
  ``_views.py`` (``pardo status/show/export``), ``_html.py`` (``pardo report``).

Other parts use the names exported here, and no others. The job store's names are imported
on first use: a run with a joblog alone does not load SQLite.
"""

from .._errors import StoreError, StoreMismatch
from .._lazy import lazy_getattr as _lazy_getattr
from .joblog import HEADER, JobLog, exit_fields, format_row, read_joblog

__all__ = ["HEADER", "JobLog", "ResumeState", "RunStore", "StoreError", "StoreMismatch",
           "StoreReader", "StoreSink", "default_store", "exit_fields", "export",
           "format_row", "inputs_identity", "open_for_map", "read_joblog", "show", "show_text",
           "status_renderable", "write_report"]

__getattr__ = _lazy_getattr(globals(), {
    "ResumeState": "._read",
    "StoreReader": "._read", "StoreSink": "._writer", "RunStore": "._runlink",
    "inputs_identity": "._runlink", "open_for_map": "._runlink",
    "default_store": "._views", "export": "._views", "show": "._views", "show_text": "._views",
    "status_renderable": "._views", "write_report": "._html",
})
