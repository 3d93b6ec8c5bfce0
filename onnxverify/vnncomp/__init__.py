"""VNN-COMP plumbing: result files, ``instances.csv``, the suite runner and its summary."""
from .instances import Instance, read_instances
from .results import VERDICTS, format_result, read_result, replay_counterexample, write_result
from .runner import RESULT_FIELDS, run_instances
from .summary import summarize, summary_table

__all__ = ["Instance", "RESULT_FIELDS", "VERDICTS", "format_result", "read_instances", "read_result",
           "replay_counterexample", "run_instances", "summarize", "summary_table", "write_result"]
