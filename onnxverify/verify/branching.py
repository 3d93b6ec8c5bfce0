"""Which neuron to split: a BaBSR-style estimate, then filtered smart branching (FSB).

Estimate (our reading of BaBSR, Bunel et al. 2020, for any rule with ``branch_points``):
splitting neuron ``j`` of a split node at threshold ``t`` makes its relaxation exact at
``t`` in both children. The output bound loses, at that neuron, ``|dB/db_U| * gap_U(t) +
dB/db_L * gap_L(t)``, where ``dB/db`` are the bound's sensitivities to the neuron's upper and
lower line intercepts (from autograd: ``neg(A)`` and ``pos(A)`` of the backward pass) and
``gap_U(t) = upper line(t) - f(t)``, ``gap_L(t) = f(t) - lower line(t)``; for ReLU at 0 this is
BaBSR's intercept score. A tiny width term breaks ties among neurons the estimate misses.

FSB (De Palma et al. 2021): the ``k`` best candidates of each subdomain are tried by bounding
both children once (no optimisation); the candidate whose worse child is best wins.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_backend
from ..ops import rule_of

__all__ = ["candidate_scores", "top_candidates", "NO_SPLIT", "TIE", "FLAT"]

NP = get_backend("numpy")
#: decision of a subdomain with nothing left to split
NO_SPLIT = (-1, -1, 0.0)
#: weight of the width tie-breaker: a subdomain whose best score is below ``FLAT`` has no
#: candidate the estimate sees (every intercept gradient is ~0)
TIE = 1e-6
FLAT = 10 * TIE


def candidate_scores(P, res):
    """Scores of every split candidate: ``(score (B, M), node (M,), idx (M,), t (B, M))`` with
    ``-inf`` where a candidate is not splittable (its threshold is not inside the neuron's
    interval). ``res``: :func:`~.beta.bound_domains` output computed with ``scores=True``."""
    scores, nodes, idxs, ts = [], [], [], []
    for k, (name, node) in enumerate(zip(P.split_nodes, P.split_rules)):
        lo, hi = res["bounds"][name]
        B = lo.shape[0]
        lo, hi = lo.reshape(B, -1), hi.reshape(B, -1)
        N = lo.shape[1]
        rule = rule_of(node)
        g = res["scores"].get(node.name)
        lines = res["lines"].get(node.name)
        for t in rule.branch_points(NP, node, res["bounds"][name][0]):
            t = np.broadcast_to(np.asarray(t, dtype=np.float64), res["bounds"][name][0].shape).reshape(B, N)
            ok = (lo < t) & (t < hi)
            width = np.minimum(t - lo, hi - t)
            s = np.where(ok, TIE * np.tanh(width), -np.inf)
            if g is not None and g[0] is not None and lines is not None:
                aL, bL, aU, bU = (np.broadcast_to(v, g[0].shape).reshape(B, -1, N) for v in lines)
                gL, gU = (v.reshape(B, -1, N) for v in g)
                f_t = np.asarray(rule.forward(NP, node, t.reshape((B,) + tuple(node.shape)))).reshape(B, 1, N)
                tt = t[:, None]
                gain = (-gU * np.maximum(aU * tt + bU - f_t, 0) + gL * np.maximum(f_t - aL * tt - bL, 0)).sum(axis=1)
                s = np.where(ok, s + gain, -np.inf)
            scores.append(s)
            nodes.append(np.full(N, k))
            idxs.append(np.arange(N))
            ts.append(t)
    if not scores:
        return np.zeros((0, 0)), np.zeros(0, int), np.zeros(0, int), np.zeros((0, 0))
    return np.concatenate(scores, 1), np.concatenate(nodes), np.concatenate(idxs), np.concatenate(ts, 1)


def top_candidates(P, res, k: int, with_scores: bool = False):
    """Up to ``k`` best candidates per subdomain: ``node, idx (B, k)`` int, ``t (B, k)``,
    ``valid (B, k)`` bool (False: fewer than ``k`` splittable neurons); ``with_scores``: and
    their scores ``(B, k)``."""
    score, node, idx, t = candidate_scores(P, res)
    B = len(res["lower"])
    if score.shape[1] == 0:
        z = np.zeros((B, 0))
        return (z.astype(int), z.astype(int), z, z.astype(bool)) + ((z,) if with_scores else ())
    k = min(k, score.shape[1])
    top = np.argpartition(-score, k - 1, axis=1)[:, :k] if k < score.shape[1] else np.broadcast_to(
        np.arange(score.shape[1]), (B, score.shape[1]))
    order = np.argsort(-np.take_along_axis(score, top, 1), axis=1)
    top = np.take_along_axis(top, order, 1)
    top_score = np.take_along_axis(score, top, 1)
    valid = np.isfinite(top_score)
    out = node[top], idx[top], np.take_along_axis(t, top, 1), valid
    return out + (top_score,) if with_scores else out
