"""VNN-COMP result files: the competition's format, read, written atomically, replayed.

First line ``sat``, ``unsat``, ``unknown``, ``timeout`` or ``error``; for ``sat`` the
counterexample follows as one s-expression::

    sat
    ((X_0 0.10000000149011612)
     (X_1 -0.5)
     (Y_0 3.25))

with X flattened in C order and Y the onnxruntime outputs at X (full float repr).
"""
from __future__ import annotations

import os
import re

import numpy as np

__all__ = ["VERDICTS", "format_result", "write_result", "read_result", "replay_counterexample"]

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")
_PAIR_RE = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


def format_result(verdict: str, counterexample=None) -> str:
    """The result file text. ``counterexample``: ``(x_flat, y_flat)`` for ``sat``."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}")
    if verdict != "sat" or counterexample is None:
        return verdict + "\n"
    x, y = (np.asarray(a, dtype=np.float64).ravel() for a in counterexample)
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


def write_result(path, verdict: str, counterexample=None) -> None:
    """Write the result file atomically (a reader never sees half a file)."""
    path = os.fspath(path)
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(format_result(verdict, counterexample))
    os.replace(tmp, path)


def read_result(path):
    """``(verdict, x (n_in,) or None, y (n_out,) or None)`` from a result file.

    Accepts the competition's spellings ``holds``/``violated`` for unsat/sat.
    """
    with open(path) as f:
        text = f.read()
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty result file")
    verdict = lines[0].strip().lower()
    verdict = {"holds": "unsat", "violated": "sat"}.get(verdict, verdict)
    if verdict not in VERDICTS:
        raise ValueError(f"{path}: unknown verdict {lines[0].strip()!r}")
    if verdict != "sat":
        return verdict, None, None
    xs, ys = {}, {}
    for kind, idx, val in _PAIR_RE.findall("\n".join(lines[1:])):
        (xs if kind == "X" else ys)[int(idx)] = float(val)
    if not xs:
        return verdict, None, None

    def dense(d, what):
        if sorted(d) != list(range(len(d))):
            raise ValueError(f"{path}: {what} indices are not 0..{len(d) - 1}")
        return np.array([d[i] for i in range(len(d))])

    return verdict, dense(xs, "X"), dense(ys, "Y") if ys else None


def replay_counterexample(onnx_path, vnnlib_path_or_prop, x_flat, ort=None):
    """Run onnxruntime at ``x_flat`` and check the property: ``(ok, y_flat)`` (see
    :func:`onnxverify.verify.attack.confirms` for the one float32 allowance on the input box)."""
    from ..verify.attack import confirms
    from ..onnx.reference import OrtModel
    from ..specs.vnnlib import Property, parse_vnnlib

    ort = ort or OrtModel(onnx_path)
    prop = vnnlib_path_or_prop if isinstance(vnnlib_path_or_prop, Property) else parse_vnnlib(vnnlib_path_or_prop)
    shape = ort.sample_shape if ort.sample_shape is not None else (len(x_flat),)
    y = np.asarray(ort(np.asarray(x_flat, dtype=np.float32).reshape((1,) + shape))).reshape(-1).astype(np.float64)
    return confirms(prop, np.asarray(x_flat, dtype=np.float64), y), y


