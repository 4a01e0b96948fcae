"""The batch part: one command template run over many inputs, GNU parallel's way.

- ``map_commands.py``: :func:`pardo.map_commands`, the entry point for Python code.
- ``scheduler.py``: :class:`Batch`, the loop that keeps ``-j`` tasks running in their job
  slots: retries, ``--halt``, ``N%`` deadlines, ordered output, the joblog.
- ``jobs.py``: where jobs come from: numbered inputs, ``--resume`` from a joblog, a
  prefetch thread for inputs that block.
- ``options.py``: ``-j``, ``--timeout`` (seconds or ``N%``), ``--halt``, ``--colsep``.
- ``inputs.py``: ``:::`` values, ``::::`` files, stdin; product, links, columns, ``-N``.
- ``template.py``: replacement strings, shell quoting, and exec without a shell when exact.
- ``results_dir.py``: ``--results DIR`` in GNU parallel's layout.
- ``pipe.py``: ``--pipe``: a stream cut into blocks of whole records.
- ``perl.py``: ``{= perl =}`` and ``--rpl``, evaluated by one perl process per run.
- ``plus.py``: ``--plus`` replacement strings.
- ``results_file.py``: ``--results NAME.csv|.tsv|.json``, one file of records.
- ``xargs.py``: ``-X``, ``-m``, ``-s``: command lines filled up to GNU's length limit.
- ``spool.py``: tasks' output in temporary files (``pardo run``'s --group), and copying it
  out in bounded chunks.

Other parts use the names exported here, and no others.
"""

from .inputs import Source, arg_groups, count_jobs
from .jobs import RESUME_MODES
from .map_commands import map_commands
from .options import compile_colsep
from .perl import PerlExpressions
from .pipe import blocks, parse_block_size, read_header
from .results_dir import results_path
from .results_file import ResultsFile
from .scheduler import Batch, job_slots
from .spool import copy_out, size_of
from .template import Template
from .xargs import LineLength, command_line_limits, fill_lines, show_limits

__all__ = ["Batch", "LineLength", "PerlExpressions", "RESUME_MODES", "ResultsFile", "Source",
           "Template", "arg_groups", "blocks", "command_line_limits", "compile_colsep",
           "copy_out", "count_jobs", "fill_lines", "job_slots", "map_commands",
           "parse_block_size", "read_header", "results_path", "show_limits", "size_of"]
