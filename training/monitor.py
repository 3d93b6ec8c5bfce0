"""Training-time monitoring on a :class:`~.tied.TrainableNetwork`: clean, IBP verified and
(optionally) PGD error of a test sample, and the neuron statuses of every activation layer
(PAPER_NOTES.md §1) from the verifier's IBP bounds on torch -- what the per-epoch log reports.

:func:`evaluate_tied` counts the statuses of ``Relu`` / ``LeakyRelu`` (dead, unstable, alive)
and ``ParamRamp`` (left dead, left unstable, alive, right unstable, right dead, unstable)
layers over the sample's l_inf boxes; fractions per layer sum to 1.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .attacks import pgd_attack

__all__ = ["evaluate_tied"]


def _test_arrays(dataset, n: Optional[int], seed: int = 0):
    """``(normalised x (n, C, H, W), labels (n,))`` of a seeded random test subset (all if None)."""
    x, y = dataset.x_test, dataset.y_test
    if n is not None and n < x.shape[0]:
        idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=int(n), replace=False))
        x, y = x[idx], y[idx]
    return dataset.normalize(x), y


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def evaluate_tied(net, dataset, eps: float, n_test: Optional[int] = None, batch_size: int = 256,
                  seed: int = 0, pgd_steps: int = 0, pgd_restarts: int = 1, statuses: bool = False) -> Dict:
    """Clean and IBP verified error of a :class:`~.tied.TrainableNetwork` (eval mode, current
    eta) on the test split, with the verifier's IBP run on torch.  Returns ``{"n", "eps",
    "clean_err", "ibp_err", "verified", "margin_min"}`` (``verified``: the per-example bool
    array; ``margin_min``: each example's smallest margin lower bound), plus ``pgd_err`` when
    ``pgd_steps > 0`` (PGD on the torch module, no onnxruntime replay: a training-time
    estimate) and ``status`` when ``statuses`` (:func:`status_fractions` of the IBP bounds)."""
    import torch

    x, y = _test_arrays(dataset, n_test, seed)
    n = x.shape[0]
    lower, upper = dataset.input_box(x, eps)
    was = net.module.training
    net.eval()
    wrong = np.zeros(n, dtype=bool)
    verified = np.zeros(n, dtype=bool)
    broken = np.zeros(n, dtype=bool)
    margin_min = np.zeros(n, dtype=np.float64)
    counts: Dict = {}
    dev = net.device
    gen = torch.Generator().manual_seed(int(seed) + 11)
    try:
        for s in _batches(n, batch_size):
            xb = torch.from_numpy(x[s]).to(dev)
            yb = torch.from_numpy(y[s]).to(dev)
            lo, hi = torch.from_numpy(lower[s]).to(dev), torch.from_numpy(upper[s]).to(dev)
            with torch.no_grad():
                wrong[s] = (net(xb).argmax(1) != yb).cpu().numpy()
                lb, env = net.margin_bounds(lo, hi, yb, keep_env=statuses)
                verified[s] = (lb > 0).all(dim=1).cpu().numpy()
                margin_min[s] = lb.amin(dim=1).double().cpu().numpy()
                if statuses:
                    _add_status_counts(counts, net, env)
            if pgd_steps > 0:
                hit, _ = pgd_attack(net.module, xb, yb, lo, hi, pgd_steps, pgd_restarts,
                                    generator=gen if dev.type == "cpu" else None)
                broken[s] = hit.cpu().numpy()
    finally:
        net.module.train(was)
    out = {"n": int(n), "eps": float(eps), "clean_err": float(wrong.mean()) if n else 0.0,
           "ibp_err": float(1.0 - verified.mean()) if n else 0.0, "verified": verified, "margin_min": margin_min}
    if pgd_steps > 0:
        out["pgd_err"] = float((broken | wrong).mean()) if n else 0.0
    if statuses:
        out["status"] = {layer: {k: v / max(c["_total"], 1) for k, v in c.items() if k != "_total"}
                         for layer, c in counts.items()}
    return out


def _add_status_counts(counts: Dict, net, env) -> None:
    """Accumulate per-layer status counts ``{layer: {status: count, "_total": n}}`` from the
    IBP bounds ``env`` of the activations' inputs, classified by each op rule (the verifier's
    ``stats`` does the same)."""
    from onnxverify.ops import rule_of

    for node in net.activation_nodes:
        rule = rule_of(node)
        if rule.statuses is None:
            continue
        l, u = (t.detach().cpu().double().numpy() for t in env[node.inputs[0]])
        code = rule.status_codes(node, l, u)
        c = counts.setdefault(node.name, {"_total": 0})
        c["_total"] += int(code.size)
        for k, name in enumerate(rule.statuses):
            c[name] = c.get(name, 0) + int((code == k).sum())
