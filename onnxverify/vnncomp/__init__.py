"""VNN-COMP plumbing: result files, ``instances.csv``, the suite runner (local processes or
Ray), resumable records and the summary."""
from .instances import Instance, read_instances
from .records import RESULT_FIELDS
from .results import VERDICTS, format_result, read_result, replay_counterexample, write_result
from .runner import ENGINES, run_instances, verify_task
from .summary import error_lines, summarize, summary_table

__all__ = ["ENGINES", "Instance", "RESULT_FIELDS", "VERDICTS", "error_lines", "format_result", "read_instances",
           "read_result", "replay_counterexample", "run_instances", "summarize", "summary_table", "verify_task",
           "write_result"]
