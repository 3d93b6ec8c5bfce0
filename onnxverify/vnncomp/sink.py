"""The driver's single writer: result files, ``log.jsonl`` and ``results.csv`` rows, and the
progress display (a bar on a terminal, one plain line per instance otherwise, or nothing)."""
from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter

import numpy as np

from .records import RESULT_FIELDS
from .results import VERDICTS, write_result

__all__ = ["MAX_ATTEMPTS", "Progress", "ResultSink", "first_line", "record_fault"]


def first_line(message, limit: int = 300) -> str:
    """The first non-empty line of ``message``, at most ``limit`` characters."""
    for line in str(message or "").splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


class Progress:
    """``mode``: ``"bar"`` (tqdm), ``"lines"`` (one line per finished instance) or ``None``;
    ``"auto"`` picks the bar when ``stream`` is a terminal, lines otherwise."""

    def __init__(self, total: int, mode="auto", stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode if total else None
        self.total, self.done, self.counts = total, 0, Counter()
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="inst", dynamic_ncols=True, smoothing=0.05, file=self.stream)

    def update(self, bench: str, row: dict) -> None:
        self.done += 1
        self.counts[row["result"]] += 1
        if self.bar is not None:
            self.bar.set_postfix_str(" ".join(f"{k}={self.counts[k]}" for k in VERDICTS if self.counts[k]),
                                     refresh=False)
            self.bar.update(1)
        elif self.mode == "lines":
            width = len(str(self.total))
            reason = f" ({row['reason']})" if row["result"] == "error" and row.get("reason") else ""
            print(f"[{self.done:{width}d}/{self.total}] {bench + ' ' if bench else ''}{row['onnx']} {row['vnnlib']}: "
                  f"{row['result']} {float(row['time']):.1f} s{reason}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ResultSink:
    """Appends finished instances to their output folders (see :mod:`.records` for the order
    of writes that makes a killed driver resumable). ``rows_by_dir``: ``{out_dir: {key: row
    or None}}`` in instance order, filled in as instances finish."""

    def __init__(self, rows_by_dir: dict, progress: Progress | None = None):
        self.rows_by_dir = rows_by_dir
        self.progress = progress
        self.files = {}
        for out_dir in rows_by_dir:
            results_csv = os.path.join(out_dir, "results.csv")
            new_file = not os.path.exists(results_csv) or os.path.getsize(results_csv) == 0
            fcsv = open(results_csv, "a", newline="")
            writer = csv.DictWriter(fcsv, fieldnames=RESULT_FIELDS, extrasaction="ignore")
            if new_file:
                writer.writeheader()
                fcsv.flush()
            self.files[out_dir] = (fcsv, writer, open(os.path.join(out_dir, "log.jsonl"), "a"))

    def finish(self, task: dict, outcome: dict) -> dict:
        """Record one finished instance. ``outcome``: ``result``, ``time`` (s), and optionally
        ``counterexample`` (``(x_flat, y_flat)`` for sat), ``message``, ``log`` (step dicts),
        ``where`` (host / pid). Returns the csv row."""
        verdict = outcome["result"] if outcome.get("result") in VERDICTS else "error"
        message = outcome.get("message") or ("" if verdict == outcome.get("result")
                                             else f"bad verdict {outcome.get('result')!r}")
        ce = outcome.get("counterexample") if verdict == "sat" else None
        write_result(task["result_path"], verdict, ce)
        row = {"onnx": task["_key"][0], "vnnlib": task["_key"][1], "result": verdict,
               "time": f"{float(outcome.get('time') or 0.0):.3f}", **task["_settings"], "reason": first_line(message)}
        fcsv, writer, flog = self.files[task["_dir"]]
        entry = {"onnx": row["onnx"], "vnnlib": row["vnnlib"], "benchmark": task.get("_bench", ""),
                 "result": verdict, "time": row["time"], "message": message, "attempts": task.get("_faults", []),
                 "where": outcome.get("where", {}), "log": list(outcome.get("log") or ())}
        flog.write(json.dumps(entry, default=_json_default) + "\n")
        flog.flush()
        writer.writerow(row)
        fcsv.flush()
        self.rows_by_dir[task["_dir"]][task["_key"]] = row
        if self.progress is not None:
            self.progress.update(task.get("_bench", ""), row)
        return row

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        for fcsv, _, flog in self.files.values():
            fcsv.close()
            flog.close()


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


#: Attempts of an instance whose worker (process or node) dies under it: one retry.
MAX_ATTEMPTS = 2


def record_fault(sink: ResultSink, task: dict, cause: str, elapsed: float = 0.0) -> bool:
    """A worker died while running ``task``. Returns True when the instance should run once
    more; otherwise writes its ``error`` row naming ``cause`` and returns False."""
    faults = task.setdefault("_faults", [])
    faults.append(cause)
    if len(faults) < MAX_ATTEMPTS:
        return True
    sink.finish(task, {"result": "error", "time": elapsed,
                       "message": f"{cause} (on {len(faults)} attempts)"})
    return False
