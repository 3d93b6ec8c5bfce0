"""After training: export, model card, final evaluation of the exported file.

:func:`finish` (called by :func:`~.trainer.train` with an ``output``) and
:func:`~.trainer.finish_from_checkpoint` (the same from a workdir's checkpoint, e.g. for a run trained
with ``output=None`` or to re-evaluate):

1. export the network at its final eta with the data set's normalisation folded into the file
   (:func:`~.export.export_trained`: the file takes raw pixels, eps in pixel units) and check it;
2. write the model card **before** the evaluation (``"evaluation": {"status": "pending", "plan":
   ...}``) -- an interrupted evaluation loses nothing else;
3. print the plan of the evaluation (:func:`~.evaluate.estimate_evaluation`: labelled phases,
   worst-case time), evaluate at every test eps and rewrite the card after each eps
   (``"status": "complete"`` at the end).

The card stores the data set as given (``data.spec``) and its location as an absolute path and
relative to the card (``data.path``, ``data.path_from_card``), so ``onnxverify evaluate`` finds it
from any working directory (:func:`~.export.card_data_spec`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import onnx

__all__ = ["finish", "format_eval", "config_from_dict"]


def config_from_dict(d: Dict):
    """A :class:`~.config.TrainConfig` from :meth:`TrainConfig.to_dict` output."""
    from .config import RECIPE_FIELDS, RUN_FIELDS, make_config

    return make_config(**{k: v for k, v in d.items() if k in RECIPE_FIELDS or k in RUN_FIELDS})


def format_eval(ev: Dict) -> str:
    parts = [f"eps {ev['eps']:g} on {ev['n']} test images: clean {100 * ev['clean_err']:.2f}%"]
    if ev.get("pgd_err") is not None:
        parts.append(f"PGD {100 * ev['pgd_err']:.2f}%")
    for m, v in ev["verified_err"].items():
        k = ev.get("n_by_method", {}).get(m, ev["n"])
        parts.append(f"{m} verified {'unavailable' if v is None else f'{100 * v:.2f}%'}"
                     + ("" if k == ev["n"] else f" (sample of {k})"))
    return ", ".join(parts)


def _versions() -> Dict[str, str]:
    import onnxruntime
    import torch

    import onnxverify

    return {"onnxverify": getattr(onnxverify, "__version__", "?"), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0]}


def _data_entry(ds, spec: str, card_dir: Path) -> Dict:
    from .export import data_locations

    entry = {"name": ds.name, "spec": spec, "n_train": int(ds.x_train.shape[0]), "n_test": int(ds.x_test.shape[0]),
             "mean": ds.mean.tolist(), "std": ds.std.tolist(), "data_range": list(ds.data_range),
             "input_note": "the model takes raw pixels in data_range (its normalisation (x - mean) / std is folded "
                           "into the file as its first nodes); eps is in raw pixel units"}
    entry.update(data_locations(spec, card_dir))
    return entry


def finish(net, history, config, proto, ds, output: Path, evaluate: bool = True,
           say: Callable[[str], None] = print, eps_test: Optional[Sequence[float]] = None,
           n_test: Optional[int] = None, method_samples: Optional[Dict[str, int]] = None,
           pgd_steps: Optional[int] = None, pgd_restarts: Optional[int] = None,
           progress: Optional[bool] = None) -> Dict:
    """Export ``net`` to ``output``, write its card, evaluate it; returns ``{"evaluation",
    "card", "export_check", "card_path"}``.  Keyword arguments override the config's
    evaluation settings (None: the config's)."""
    from .evaluate import estimate_evaluation, evaluate_onnx, format_estimate
    from .export import export_trained, write_model_card
    from .models import model_metadata

    cfg, rec = config, config.recipe
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    check_x = ds.normalize(ds.x_test[: min(64, ds.x_test.shape[0])])
    _, report = export_trained(net, output, check_inputs=check_x, normalization=(ds.mean, ds.std),
                               metadata={"onnxverify.trained_eps": repr(rec.eps_train),
                                         "onnxverify.trained_method": rec.method,
                                         "onnxverify.data_mean": _json(ds.mean.tolist()),
                                         "onnxverify.data_std": _json(ds.std.tolist())})
    say(f"exported {output} (raw-pixel inputs; onnxruntime vs torch max abs err "
        f"{report['max_abs_err_ort_vs_torch']:.2g})")
    eps_list = tuple(eps_test or rec.eps_test or (rec.eps_train,))
    pgd_steps = cfg.pgd_steps if pgd_steps is None else pgd_steps
    pgd_restarts = cfg.pgd_restarts if pgd_restarts is None else pgd_restarts
    n_test = cfg.n_test if n_test is None else n_test
    progress = cfg.progress if progress is None else progress
    meta = model_metadata(proto)
    times = [h["time_s"] for h in history]
    card = {
        "architecture": meta.get("architecture", "custom"),
        "activation": net.activation_kind(),
        "batchnorm": meta.get("batchnorm", str(any(kind == "bn" for _, kind, _ in net.bindings)).lower()),
        "init": meta.get("init"),
        "input_shape": list(net.input_shape),
        "input_space": "raw",
        "num_classes": net.num_classes,
        "final_eta": float(net.paramramps[0].eta) if net.paramramps else (
            float(net.leakys[0].negative_slope) if net.leakys else None),
        "data": _data_entry(ds, cfg.data, output.parent),
        "training": {"method": rec.method, "eps_train": rec.eps_train, "eps_test": list(rec.eps_test),
                     "epochs": len(history), "config": cfg.to_dict(),
                     "time_per_epoch_s": float(np.mean(times)) if times else None,
                     "total_train_s": float(np.sum(times)) if times else None,
                     "final_log": history[-1] if history else None},
        "evaluation": {"status": "pending" if evaluate else "skipped", "eps": list(eps_list),
                       "methods": list(cfg.verify_methods), "pgd": bool(cfg.pgd), "pgd_steps": pgd_steps,
                       "pgd_restarts": pgd_restarts, "n_test": n_test, "method_samples": method_samples or {}},
        "final_errors": {},
        "export_check": report,
        "versions": _versions(),
    }
    path = write_model_card(output, card)
    say(f"wrote {path} (evaluation {card['evaluation']['status']})")
    evals: Dict = {}
    if evaluate:
        est = estimate_evaluation(output, ds, eps_list, cfg.verify_methods, cfg.pgd, pgd_steps, pgd_restarts,
                                  n_test=n_test, method_samples=method_samples)
        card["evaluation"]["plan_worst_case_s"] = est["total_s"]
        say(format_estimate(est))
        t0 = time.perf_counter()
        for eps in eps_list:
            ev = evaluate_onnx(output, ds, eps, methods=cfg.verify_methods, pgd=cfg.pgd, pgd_steps=pgd_steps,
                               pgd_restarts=pgd_restarts, n_test=n_test, method_samples=method_samples,
                               batch_size=cfg.eval_batch_size, seed=cfg.seed, progress=progress, echo=say)
            evals[f"{eps:g}"] = ev
            say(format_eval(ev) + f"  ({sum(ev['time_s'].values()):.0f} s)")
            card["final_errors"] = evals
            write_model_card(output, card)
        card["evaluation"]["status"] = "complete"
        card["evaluation"]["time_s"] = time.perf_counter() - t0
        write_model_card(output, card)
        say(f"completed {path}")
    return {"evaluation": evals, "card": card, "export_check": report, "card_path": str(path)}


def _json(v) -> str:
    import json

    return json.dumps(v)
