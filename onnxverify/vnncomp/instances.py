"""``instances.csv``: the competition's list of (onnx, vnnlib, timeout) rows."""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

from ..errors import InputError

__all__ = ["Instance", "read_instances"]


@dataclass
class Instance:
    """One row of an ``instances.csv``: paths as written (relative to ``root``), timeout in s."""

    onnx: str
    vnnlib: str
    timeout: float
    root: str = "."
    benchmark: str = ""
    index: int = 0

    @property
    def onnx_path(self):
        return os.path.normpath(os.path.join(self.root, self.onnx))

    @property
    def vnnlib_path(self):
        return os.path.normpath(os.path.join(self.root, self.vnnlib))

    @property
    def key(self):
        return self.onnx, self.vnnlib

    def result_name(self) -> str:
        def stem(p):
            p = re.sub(r"\.gz$", "", p)
            p = os.path.splitext(p)[0]
            return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", p.replace(os.sep, "/").strip("./").replace("/", "-"))

        return f"{self.index:04d}_{stem(self.onnx)}__{stem(self.vnnlib)}.txt"


def read_instances(csv_path, benchmark: str | None = None) -> list:
    """Instances of a competition ``instances.csv`` (``onnx,vnnlib,timeout``, no header;
    a header line is tolerated). ``benchmark`` defaults to the csv's folder name."""
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise InputError(f"instances file not found: {csv_path}")
    root = os.path.dirname(os.path.abspath(csv_path))
    bench = benchmark or os.path.basename(root)
    out, seen = [], set()
    with open(csv_path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if len(row) < 3:
                raise InputError(f"{csv_path}:{lineno}: expected onnx,vnnlib,timeout, got {','.join(row)!r}")
            try:
                timeout = float(row[2])
            except ValueError:
                if lineno == 1:  # a header
                    continue
                raise InputError(f"{csv_path}:{lineno}: timeout {row[2]!r} is not a number") from None
            if (row[0], row[1]) in seen:
                continue
            seen.add((row[0], row[1]))
            out.append(Instance(row[0], row[1], timeout, root, bench, len(out)))
    if not out:
        raise InputError(f"{csv_path}: no instances")
    return out


