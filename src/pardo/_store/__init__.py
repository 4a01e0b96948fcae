"""The job store: every task attempt of a run recorded in SQLite, and its readers."""

from ._db import StoreError
from ._read import ResumeState, StoreMismatch, StoreReader
from ._writer import StoreSink

__all__ = ["ResumeState", "StoreError", "StoreMismatch", "StoreReader", "StoreSink"]
