"""Training curves from a run's ``log.jsonl`` (``onnxverify plot LOG.jsonl -o curves.png``).

One figure (matplotlib, Agg backend, no display needed):

* top row -- losses per epoch (total, clean, robust, and MTL-IBP's PGD / IBP parts, the
  warm-up regulariser); schedules (eps / eps_train (from the ``config.json`` beside the log,
  else the largest eps logged), kappa, beta, eta / eta_start, lr / lr_0,
  all as fractions of their maximum, so one axis holds them); errors in % (train clean,
  train verified, test clean, test PGD, test IBP-verified at the log's ``eps_eval``);
* bottom row -- neuron statuses of every activation layer over training (stacked areas of
  the fractions of dead / unstable / alive neurons, or ParamRamp's six statuses, from IBP
  bounds on the per-epoch test sample), as in the paper's Figures 4 and 6.

Several logs can be given: their error curves share the errors panel (labelled by the log's
folder), the other panels show the first log.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["read_log", "plot_curves", "STATUS_COLOURS"]

STATUS_COLOURS = {"dead": "#4d4d4d", "left dead": "#4d4d4d", "left unstable": "#e6a532", "alive": "#3a8f3a",
                  "right unstable": "#5aa0d8", "right dead": "#1f4e8c", "unstable": "#c0392b"}
STATUS_ORDER = ("dead", "left dead", "left unstable", "alive", "right unstable", "right dead", "unstable")


def read_log(path) -> List[Dict]:
    """The records of a JSONL training log (one JSON object per line; blank lines skipped).
    Raises ``ValueError`` naming the line of a malformed record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path}")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON record ({e.msg})") from None
        if not isinstance(rec, dict) or "epoch" not in rec:
            raise ValueError(f"{path}:{i}: a training log record needs an 'epoch' field")
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: no records (is it a training log.jsonl?)")
    return records


def _series(records, key, scale=1.0):
    xs = [r["epoch"] for r in records if r.get(key) is not None]
    ys = [r[key] * scale for r in records if r.get(key) is not None]
    return xs, ys


def _config_beside(path) -> Dict:
    """The run's ``config.json`` next to its log (the training workdir), if any."""
    p = Path(path).with_name("config.json")
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _label(path) -> str:
    p = Path(path)
    return p.parent.parent.name if p.parent.name == "train" else p.parent.name or p.stem


def plot_curves(logs: Sequence, out, title: Optional[str] = None) -> Path:
    """Draw the figure for one or more log files (paths) into ``out`` (.png/.pdf/.svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(str(p), read_log(p)) for p in logs]
    first = runs[0][1]
    layers = list((first[-1].get("status") or {}).keys())
    ncols = max(3, len(layers))
    fig = plt.figure(figsize=(5.2 * ncols, 8.4 if layers else 4.6), constrained_layout=True)
    grid = fig.add_gridspec(2 if layers else 1, ncols)

    ax = fig.add_subplot(grid[0, 0])
    for key, lab in (("loss", "total"), ("loss_clean", "clean CE"), ("loss_robust", "robust term"),
                     ("loss_adv", "PGD CE (MTL-IBP)"), ("loss_ibp", "IBP CE (MTL-IBP)"), ("loss_reg", "warm-up reg.")):
        xs, ys = _series(first, key)
        if xs:
            ax.plot(xs, ys, label=lab)
    ax.set_yscale("log")
    ax.set(title="Training losses (epoch means)", xlabel="epoch", ylabel="loss (log scale)")
    ax.legend(fontsize=8, loc="best")

    ax = fig.add_subplot(grid[0, 1])
    cfg = _config_beside(runs[0][0])
    eps_max = float(cfg.get("eps_train") or 0.0) or max((r.get("eps") or 0.0) for r in first) or 1.0
    eta0 = max((r.get("eta") or 0.0) for r in first) or 1.0
    lr0 = max((r.get("lr") or 0.0) for r in first) or 1.0
    for key, lab, s in (("eps", f"eps / {eps_max:g}", 1 / eps_max), ("kappa", "kappa", 1.0), ("beta", "beta", 1.0),
                        ("eta", f"eta / {eta0:g}", 1 / eta0), ("lr", f"lr / {lr0:g}", 1 / lr0)):
        xs, ys = _series(first, key, s)
        if xs and any(ys):
            ax.plot(xs, ys, label=lab, drawstyle="steps-post" if key == "lr" else "default")
    ax.set(title="Schedules (value at the end of each epoch)", xlabel="epoch", ylabel="fraction of maximum",
           ylim=(-0.03, 1.05))
    ax.legend(fontsize=8, loc="center right")

    ax = fig.add_subplot(grid[0, 2])
    many = len(runs) > 1
    for path, recs in runs:
        eps_eval = next((r["eps_eval"] for r in recs if "eps_eval" in r), None)
        tag = f"{_label(path)}: " if many else ""
        keys = [("test_ibp_verified_err", f"test IBP-verified (eps {eps_eval:g})" if eps_eval is not None else "test IBP-verified"),
                ("test_pgd_err", f"test PGD (eps {eps_eval:g})" if eps_eval is not None else "test PGD"),
                ("test_clean_err", "test clean")]
        if not many:
            keys += [("train_ibp_verified_err", "train IBP-verified (running eps)"),
                     ("train_verified_err", "train verified, training bound"), ("train_clean_err", "train clean")]
        for key, lab in keys:
            xs, ys = _series(recs, key, 100.0)
            if xs:
                ax.plot(xs, ys, label=tag + lab, linestyle="--" if key.startswith("train") else "-")
    ax.set(title="Errors", xlabel="epoch", ylabel="error (%)", ylim=(-2, 102))
    ax.legend(fontsize=7 if many else 8, loc="center right", framealpha=0.6)

    for i, layer in enumerate(layers):
        ax = fig.add_subplot(grid[1, i])
        recs = [r for r in first if r.get("status", {}).get(layer)]
        xs = [r["epoch"] for r in recs]
        names = [s for s in STATUS_ORDER if any(s in r["status"][layer] for r in recs)]
        ys = [[100.0 * r["status"][layer].get(s, 0.0) for r in recs] for s in names]
        ax.stackplot(xs, ys, labels=names, colors=[STATUS_COLOURS[s] for s in names], alpha=0.9)
        eps_eval = next((r["eps_eval"] for r in recs if "eps_eval" in r), None)
        ax.set(title=f"Neuron statuses, layer {i + 1} ({layer})" + (f", IBP at eps {eps_eval:g}" if eps_eval else ""),
               xlabel="epoch", ylabel="neurons (%)", ylim=(0, 100), xlim=(min(xs), max(xs)) if len(xs) > 1 else None)
        ax.legend(fontsize=7, loc="lower left")
    t = [h["time_s"] for h in first if "time_s" in h]
    sub = f"{len(first)} epochs, {sum(t) / max(len(t), 1):.1f} s per epoch, {sum(t) / 3600:.2f} h training"
    fig.suptitle((title or _label(runs[0][0])) + f"  ({sub})", fontsize=12)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
