"""The result files of the benchmark scripts (vnncomp.py, complete.py): one writer for both."""
from __future__ import annotations

import csv
import json
from pathlib import Path


def write_summary(out: Path, meta: dict, summary: dict, total: dict, rows: list, csv_name: str = "summary.csv"):
    """Write ``out/summary.json`` (the run's settings ``meta``, then ``benchmarks``: the per-family
    ``summary`` and ``total``) and ``out/csv_name`` (one line per instance row ``rows``, a list of
    dicts with the same keys; a header-only file when there are none)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "summary.json", "w") as f:
        json.dump({**meta, "benchmarks": summary, "total": total}, f, indent=1)
    with open(out / csv_name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["benchmark"])
        w.writeheader()
        w.writerows(rows)
