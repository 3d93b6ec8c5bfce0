"""Run several bound methods on one problem and tabulate tightness, time and memory."""
from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

DEFAULT_RUNS = [("ibp", None)] + [(m, s) for m in ("crown-ibp", "lbp", "crown-lbp", "crown")
                                  for s in ("tight", "adaptive")]


@dataclass
class MethodResult:
    method: str
    strategy: str | None
    mean_width: float
    margin_lower: float  # mean over samples of the smallest margin lower bound (spec runs)
    verified: int  # samples whose every margin lower bound is > 0
    n: int
    time_s: float
    peak_mb: float  # peak traced allocation during the call (NumPy arrays included)
    error: str = ""

    @property
    def label(self) -> str:
        return self.method + (f"/{self.strategy}" if self.strategy else "")


def measure(fn):
    """``(result, seconds, peak MB)`` of ``fn()``; peak by tracemalloc."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        dt = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return out, dt, peak / 2**20


def compare_methods(net, input_set, spec, runs=DEFAULT_RUNS, max_memory=None) -> list:
    """One :class:`MethodResult` per ``(method, strategy)``; a method that cannot fit the
    memory limit gets an ``error`` instead of stopping the comparison."""
    from ..errors import MemoryLimitError

    out = []
    for method, strategy in runs:
        try:
            b, dt, peak = measure(lambda: net.bounds(input_set, method=method, strategy=strategy, spec=spec,
                                                     max_memory=max_memory))
        except MemoryLimitError as e:
            out.append(MethodResult(method, strategy, np.nan, np.nan, 0, 0, np.nan, np.nan, str(e)))
            continue
        lo, hi = np.asarray(b.lower), np.asarray(b.upper)
        lo2 = lo.reshape(lo.shape[0], -1)
        out.append(MethodResult(method, strategy, float((hi - lo).mean()), float(lo2.min(axis=1).mean()),
                                int((lo2 > 0).all(axis=1).sum()), lo.shape[0], dt, peak))
    return out


def plot_tightness(net, make_set, spec, eps_values, runs, path, max_memory=None):
    """Figure-3 style: mean bound range (upper - lower) vs eps, one line per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        from ..errors import InputError

        raise InputError("--plot needs matplotlib: pip install 'onnxverify[plot]'") from e
    curves = {}
    for eps in eps_values:
        for r in compare_methods(net, make_set(eps), spec, runs, max_memory):
            curves.setdefault(r.label, []).append(r.mean_width)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in curves.items():
        ax.plot(eps_values, ys, marker="o", label=label)
    ax.set_xlabel("eps")
    ax.set_ylabel("mean bound range (upper - lower)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return curves
