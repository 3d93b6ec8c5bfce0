"""Neuron statuses for people: a text table and the paper's Figures 4/6 (stacked bars per layer)."""
from __future__ import annotations

import numpy as np

from ..bounds.status import ALL_STATUSES
from ..errors import InputError
from .tables import format_table

__all__ = ["STATUS_COLORS", "format_status_table", "plot_status"]

#: colours of the stacked bars (dead: greys/blues, alive: green, unstable: warm)
STATUS_COLORS = {
    "dead": "#595959", "left dead": "#9a9a9a", "left unstable": "#ff9f40", "alive": "#2ca02c",
    "right unstable": "#9ecae1", "right dead": "#1f77b4", "unstable": "#d62728",
}


def _columns(statuses) -> list:
    present = {s for st in statuses for s in st.statuses}
    return [s for s in ALL_STATUSES if s in present]


def format_status_table(statuses, percent: bool = True) -> str:
    """A text table: one row per layer, one column per status (``-`` where a status does not
    apply to the layer's activation). Percentages average over the batch."""
    cols = _columns(statuses)
    rows = []
    for st in statuses:
        cells = []
        for s in cols:
            if s not in st.counts:
                cells.append("-")
            elif percent:
                cells.append(f"{st.counts[s]} ({100 * st.fractions[s]:.1f}%)")
            else:
                cells.append(str(st.counts[s]))
        rows.append([st.index, st.name[:24], st.op, st.size] + cells)
    return format_table(["layer", "node", "op", "neurons"] + cols, rows)


def plot_status(statuses, path, title: str | None = None):
    """Stacked bar chart of status percentages per layer (the paper's Figures 4 and 6).

    ``statuses``: a list of :class:`LayerStatus`, or a dict ``{label: list}`` for one panel
    per label side by side (e.g. ReLU vs ParamRamp, or one per method). Writes ``path``
    (format from its extension) and returns it. Needs matplotlib.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot_status needs matplotlib: pip install matplotlib") from None
    panels = statuses if isinstance(statuses, dict) else {None: statuses}
    if not panels or not any(len(v) for v in panels.values()):
        raise InputError("nothing to plot: the network has no ReLU/LeakyReLU/ParamRamp layers")
    cols = _columns([s for v in panels.values() for s in v])
    fig = Figure(figsize=(max(4.0, 1.2 + 0.55 * max(len(v) for v in panels.values())) * len(panels), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (label, sts) in zip(axes, panels.items()):
        x = np.arange(1, len(sts) + 1)
        bottom = np.zeros(len(sts))
        for s in cols:
            h = np.array([100 * st.fractions.get(s, 0.0) for st in sts])
            if h.any():
                ax.bar(x, h, bottom=bottom, color=STATUS_COLORS[s], label=s, width=0.7, edgecolor="white",
                       linewidth=0.4)
            bottom += h
        ax.set_xticks(x)
        ax.set_xlabel("layer")
        ax.set_ylim(0, 100)
        sub = label if label is not None else (
            f"{sts[0].method}{' / ' + sts[0].strategy if sts and sts[0].strategy else ''}" if sts else "")
        if sub:
            ax.set_title(str(sub), fontsize=10)
    axes[0].set_ylabel("neurons (%)")
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
    labels = [s for s in cols if s in handles]
    fig.legend([handles[s] for s in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
