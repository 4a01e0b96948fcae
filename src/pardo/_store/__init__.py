"""The store part: records of finished tasks. Today one format of them, GNU parallel's
joblog (``joblog.py``), which the batch runner writes and reads back to resume; the job
store (SQLite) and its readers come next.

Other parts use the names exported here, and no others.
"""

from .joblog import JobLog, exit_fields, read_joblog

__all__ = ["JobLog", "exit_fields", "read_joblog"]
