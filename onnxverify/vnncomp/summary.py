"""Counts per verdict and the console table of a suite run."""
from __future__ import annotations

from collections import Counter

from ..report.tables import format_table
from .results import VERDICTS

__all__ = ["error_lines", "summarize", "summary_table"]


def summarize(rows) -> dict:
    """Counts per verdict (all of :data:`VERDICTS`, zeros included) plus ``total`` and ``time``."""
    c = Counter(r["result"] for r in rows)
    out = {v: c.get(v, 0) for v in VERDICTS}
    out["total"] = len(rows)
    out["time"] = round(sum(float(r["time"]) for r in rows if r.get("time") not in (None, "")), 1)
    return out


def summary_table(by_benchmark: dict) -> str:
    """A text table: one row per benchmark (``{name: rows}``), counts per verdict."""
    headers = ["benchmark", *VERDICTS, "total", "time_s"]
    table, tot = [], Counter()
    for name, rows in by_benchmark.items():
        s = summarize(rows)
        table.append([name, *[s[v] for v in VERDICTS], s["total"], f"{s['time']:.0f}"])
        for k in (*VERDICTS, "total", "time"):
            tot[k] += s[k]
    if len(by_benchmark) > 1:
        table.append(["all", *[tot[v] for v in VERDICTS], tot["total"], f"{tot['time']:.0f}"])
    return format_table(headers, table)


def error_lines(by_benchmark: dict, limit: int = 20) -> list:
    """One console line per ``error`` row (``benchmark onnx vnnlib: reason``), at most
    ``limit`` of them plus a line counting the rest."""
    errs = [(name, r) for name, rows in by_benchmark.items() for r in rows if r.get("result") == "error"]
    out = [f"error: {name + ' ' if len(by_benchmark) > 1 else ''}{r['onnx']} {r['vnnlib']}: "
           f"{r.get('reason') or '(no reason recorded)'}" for name, r in errs[:limit]]
    if len(errs) > limit:
        out.append(f"... and {len(errs) - limit} more error row(s): see results.csv (column reason)")
    return out
