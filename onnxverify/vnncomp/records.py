"""What a suite run keeps on disk, and how a rerun decides what to reuse.

Per output folder: ``results.csv`` (one row per finished instance, :data:`RESULT_FIELDS`),
``log.jsonl`` (one JSON line per row: the steps, attempts, where it ran) and ``results/``
(one competition result file per instance). Every row records the settings that produced
it (effective ``timeout``, the ``cap``, the bound ``methods``, the onnxverify ``version``);
a rerun reuses a row only when those match, and redoes it otherwise.

The driver is the only writer. For each finished instance it writes the result file, then
the log line, then the csv row (the row is the commit point): a driver killed at any moment
leaves, at worst, a result file or log line without a row, which the next run drops and
redoes. At the start of a run :func:`plan_group` rewrites ``results.csv`` and ``log.jsonl``
atomically to exactly the reused rows (a torn last line, duplicates and superseded rows go).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field

from .results import VERDICTS

__all__ = ["RESULT_FIELDS", "GroupPlan", "plan_group", "read_rows", "settings_row", "version"]

RESULT_FIELDS = ["onnx", "vnnlib", "result", "time", "timeout", "cap", "methods", "version", "reason"]
#: The fields that must match for a row to be reused.
SETTING_FIELDS = ("timeout", "methods", "version")


def version() -> str:
    from .. import __version__

    return __version__


def methods_key(methods) -> str:
    """The canonical text of a bound cascade (``default`` for onnxverify's own)."""
    if methods is None:
        return "default"
    from ..verify import parse_methods

    return ",".join(m + (f":{s}" if s else "") for m, s in parse_methods(methods))


def _num(x) -> str:
    return "" if x is None else f"{float(x):g}"


def settings_row(timeout: float, cap, methods) -> dict:
    """The settings columns of a row made with effective ``timeout`` (s), ``cap`` (s or None)
    and ``methods`` (a cascade spec or None)."""
    return {"timeout": _num(timeout), "cap": _num(cap), "methods": methods_key(methods), "version": version()}


def _valid(row) -> bool:
    return (row.get("result") in VERDICTS and bool(row.get("onnx")) and bool(row.get("vnnlib"))
            and None not in row and row.get("time") not in (None, ""))


def read_rows(results_csv) -> dict:
    """``{(onnx, vnnlib): row}`` of the valid rows of a results.csv (the last row of a key
    wins; a torn or malformed line is skipped). Rows of the older four-column format have
    empty settings, so they count as made with other settings."""
    rows = {}
    if not os.path.exists(results_csv):
        return rows
    with open(results_csv, newline="") as f:
        for r in csv.DictReader(f):
            if _valid(r):
                rows[(r["onnx"], r["vnnlib"])] = {k: r.get(k) or "" for k in RESULT_FIELDS}
    return rows


def _read_log(path) -> dict:
    lines = {}
    if not os.path.exists(path):
        return lines
    with open(path) as f:
        for line in f:
            try:
                d = json.loads(line)
                lines[(d["onnx"], d["vnnlib"])] = line if line.endswith("\n") else line + "\n"
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
    return lines


def _atomic_write(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        write(f)
    os.replace(tmp, path)


@dataclass
class GroupPlan:
    """What a run does in one output folder: ``todo`` (instances to run, in order), ``rows``
    (``{key: row}`` reused, for the summary) and the counts behind the resume line."""

    todo: list = field(default_factory=list)
    rows: dict = field(default_factory=dict)
    reused: int = 0
    redo_settings: int = 0
    redo_verdict: int = 0
    new: int = 0
    resumed: bool = False

    def line(self, name: str) -> str:
        """The console line of a resumed run (what was reused, what is redone and why)."""
        redone = self.redo_settings + self.redo_verdict
        why = []
        if self.redo_settings:
            why.append(f"{self.redo_settings} made with other settings")
        if self.redo_verdict:
            why.append(f"{self.redo_verdict} by --redo")
        return (f"{name}: resuming: {self.reused} row(s) reused, {redone} redone"
                + (f" ({', '.join(why)})" if why else "") + f", {self.new} new")


def plan_group(instances, out_dir, settings_of, fresh: bool = False, redo=()) -> GroupPlan:
    """Decide, for one output folder, which ``instances`` run and which rows are reused.

    ``settings_of(inst)``: the settings columns (:func:`settings_row`) this run would write
    for ``inst``; ``fresh``: delete results.csv, log.jsonl and results/ first; ``redo``:
    verdicts whose rows are redone whatever their settings. Rewrites results.csv and
    log.jsonl to the kept rows (rows of instances not in this list are kept too) and deletes
    the result files of the instances that will run.
    """
    results_csv = os.path.join(out_dir, "results.csv")
    log_path = os.path.join(out_dir, "log.jsonl")
    res_dir = os.path.join(out_dir, "results")
    if fresh:
        for p in (results_csv, log_path):
            if os.path.exists(p):
                os.remove(p)
        shutil.rmtree(res_dir, ignore_errors=True)
    os.makedirs(res_dir, exist_ok=True)
    plan = GroupPlan(resumed=os.path.exists(results_csv))
    old = read_rows(results_csv)
    redo = set(redo)
    for inst in instances:
        row = old.get(inst.key)
        if row is None:
            plan.new += 1
        elif row["result"] in redo:
            plan.redo_verdict += 1
        elif any(row[k] != v for k, v in settings_of(inst).items() if k in SETTING_FIELDS):
            plan.redo_settings += 1
        else:
            plan.reused += 1
            plan.rows[inst.key] = row
            continue
        old.pop(inst.key, None)
        plan.todo.append(inst)
        p = os.path.join(res_dir, inst.result_name())
        if os.path.exists(p):
            os.remove(p)
    if plan.resumed:
        _atomic_write(results_csv, lambda f: _write_rows(f, old.values()))
        logs = _read_log(log_path)
        _atomic_write(log_path, lambda f: f.writelines(logs[k] for k in old if k in logs))
    return plan


def _write_rows(f, rows):
    w = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
