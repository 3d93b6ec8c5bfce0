"""Run several bound methods on one problem and tabulate tightness, time and memory."""
from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

DEFAULT_RUNS = [("ibp", None)] + [(m, s) for m in ("crown-ibp", "lbp", "crown-lbp", "crown")
                                  for s in ("tight", "adaptive")]

#: The plot's eps grid, as multiples of the table's eps (``compare --plot``; ``--plot-eps``
#: gives explicit values instead).
PLOT_EPS_FACTORS = (0.25, 0.5, 1.0, 1.5, 2.0)


@dataclass
class MethodResult:
    method: str
    strategy: str | None
    mean_width: float  # mean of upper - lower over samples and spec rows
    margin_lower: float  # smallest margin lower bound over all samples and spec rows (the worst case)
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


def compare_methods(net, input_set, spec, runs=DEFAULT_RUNS, max_memory=None, on_run=None) -> list:
    """One :class:`MethodResult` per ``(method, strategy)``; a method that cannot fit the
    memory limit gets an ``error`` instead of stopping the comparison. ``on_run(result)``
    is called after each run (progress)."""
    from ..errors import MemoryLimitError

    out = []
    for method, strategy in runs:
        try:
            b, dt, peak = measure(lambda: net.bounds(input_set, method=method, strategy=strategy, spec=spec,
                                                     max_memory=max_memory))
        except MemoryLimitError as e:
            out.append(MethodResult(method, strategy, np.nan, np.nan, 0, 0, np.nan, np.nan, str(e)))
        else:
            lo, hi = np.asarray(b.lower), np.asarray(b.upper)
            lo2 = lo.reshape(lo.shape[0], -1)
            out.append(MethodResult(method, strategy, float((hi - lo).mean()), float(lo2.min()),
                                    int((lo2 > 0).all(axis=1).sum()), lo.shape[0], dt, peak))
        if on_run is not None:
            on_run(out[-1])
    return out


def tightness_curves(net, make_set, spec, eps_values, runs=DEFAULT_RUNS, max_memory=None, known=None,
                     on_eps=None) -> dict:
    """``{label: [mean width at each eps]}`` (NaN where a method did not fit).

    ``make_set(eps)`` builds the input set; ``known``: ``{eps: [MethodResult]}`` already
    computed (the table's), reused instead of rerun; ``on_eps(i, eps, seconds)`` is called
    after each eps value (progress).
    """
    curves = {f"{m}/{s}" if s else m: [] for m, s in runs}
    for i, eps in enumerate(eps_values):
        t0 = time.perf_counter()
        results = (known or {}).get(eps)
        if results is None:
            results = compare_methods(net, make_set(eps), spec, runs, max_memory)
        for r in results:
            curves.setdefault(r.label, []).append(r.mean_width)
        if on_eps is not None:
            on_eps(i, eps, time.perf_counter() - t0)
    return curves


def _groups(curves, rtol=1e-6):
    """Curves that coincide (within ``rtol``) merged: ``[(labels, values)]`` in input order."""
    groups = []
    for label, ys in curves.items():
        y = np.asarray(ys, dtype=np.float64)
        for g in groups:
            if np.allclose(g[1], y, rtol=rtol, atol=0.0, equal_nan=True):
                g[0].append(label)
                break
        else:
            groups.append(([label], y))
    return groups


_COLORS = {"ibp": "black", "lbp": "tab:orange", "crown-ibp": "tab:blue", "crown-lbp": "tab:green",
           "crown": "tab:red"}
_MARKERS = {"ibp": "s", "lbp": "v", "crown-ibp": "o", "crown-lbp": "D", "crown": "^"}
_LINES = {None: "-", "tight": "-", "adaptive": "--", "constant": ":"}


def plot_tightness(net, make_set, spec, eps_values, runs, path, max_memory=None, title=None, known=None,
                   on_eps=None):
    """Figure-3 style: mean bound range (upper - lower) vs eps, one line per method/strategy.

    Curves that coincide (common on IBP-trained networks, where several methods give the
    same bounds) are drawn once and labelled with every method they stand for; methods differ
    by colour and marker, strategies by line style (tight solid, adaptive dashed). The legend
    sits outside the axes. Returns ``{label: [widths]}``. Needs matplotlib.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        from ..errors import OnnxVerifyError

        raise OnnxVerifyError("--plot needs matplotlib: pip install matplotlib (or 'onnxverify[plot]')") from e
    curves = tightness_curves(net, make_set, spec, eps_values, runs, max_memory, known, on_eps)
    fig = Figure(figsize=(7.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for labels, ys in _groups(curves):
        method, _, strategy = labels[0].partition("/")
        ax.plot(eps_values, ys, color=_COLORS.get(method, None), marker=_MARKERS.get(method, "x"),
                linestyle=_LINES.get(strategy or None, "-"), markersize=5, linewidth=1.4,
                markerfacecolor="none" if strategy == "adaptive" else None, label=" = ".join(labels))
    ax.set_xlabel("eps")
    ax.set_ylabel("mean bound range (upper - lower)")
    if all(np.all(np.asarray(v)[np.isfinite(v)] > 0) for v in curves.values()):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              title="method/strategy", title_fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return curves
