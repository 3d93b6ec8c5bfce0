"""Which neuron to split: a BaBSR-style estimate, then filtered smart branching (FSB).

Estimate (our reading of BaBSR, Bunel et al. 2020, for any splittable rule at its
``split_points``): splitting neuron ``j`` of a split node at threshold ``t`` makes its
relaxation exact at ``t`` in both children (for a piecewise-linear rule; an S-shaped one's
lines then touch it near ``t``). The output bound loses, at that neuron, ``|dB/db_U| * gap_U(t) +
dB/db_L * gap_L(t)``, where ``dB/db`` are the bound's sensitivities to the neuron's upper and
lower line intercepts (from autograd: ``neg(A)`` and ``pos(A)`` of the backward pass) and
``gap_U(t) = upper line(t) - f(t)``, ``gap_L(t) = f(t) - lower line(t)``; for ReLU at 0 this is
BaBSR's intercept score. A tiny width term breaks ties among neurons the estimate misses.

FSB (De Palma et al. 2021): the ``k`` best candidates of each subdomain are tried by bounding
both children once (no optimisation); the candidate whose worse child is best wins. For a
split on a node that is an affine function of the input (the first layer), that one pass is
the parent's with one neuron's line changed, which reaches the input as a change of the
neuron's own input weights: :class:`FirstLayerTrials` computes it from the parent's pass
(its coefficients on the split rule's output and on the input) in ``O(fan-in)`` per child.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_backend
from ..ops import rule_of

__all__ = ["candidate_scores", "top_candidates", "FirstLayerTrials", "NO_SPLIT", "TIE", "FLAT"]

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
        for t in rule.split_points(NP, node, *res["bounds"][name]):
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


def affine_prefix(graph, name):
    """``(M, c)`` with node ``name``'s value ``= M x + c`` (``M`` a CSR ``(N, n0)`` matrix, ``c
    (N,)``) when every node between the input and it is affine, else None."""
    from scipy.sparse import coo_matrix

    anc = graph.ancestors(name) | {name}
    chain = [n for n in graph.computed if n.name in anc]
    if not all(rule_of(n).affine for n in chain):
        return None
    n0 = graph.input.size

    def value(x):  # (m, n0) -> (m, N)
        vals = {graph.input.name: x.reshape((len(x),) + tuple(graph.input_shape))}
        for n in chain:
            vals[n.name] = np.asarray(rule_of(n).apply(NP, n, *[vals[i] for i in n.inputs], bias=True), dtype=np.float64)
        return vals[name].reshape(len(x), -1)

    c = value(np.zeros((1, n0)))[0]
    rows, cols, vals = [], [], []
    for s in range(0, n0, 128):
        m = min(128, n0 - s)
        eye = np.zeros((m, n0))
        eye[np.arange(m), s + np.arange(m)] = 1.0
        d = value(eye) - c  # (m, N): columns s..s+m of M, transposed
        i, j = np.nonzero(d)
        rows.append(j)
        cols.append(s + i)
        vals.append(d[i, j])
    M = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(c.size, n0))
    return M.tocsr(), c


class FirstLayerTrials:
    """FSB's trial bounds of children split on first-layer neurons (split nodes affine in the
    input, whose rule knows the exact line of each side, ``split_line``), without a pass.

    Shapes: the parent's captured pass (``res["capture"]``, see
    :func:`~.beta.bound_domains`): ``A_r (B, K', *shape)`` on the split rule's output,
    ``A_in (B, K', n0)`` on the input, ``low (B, K')``, its lines ``res["lines"]``. A child
    of candidate ``(b, k, j, side)`` changes neuron ``j``'s line from the parent's (``pos(A_r)``
    meets the lower line, ``neg(A_r)`` the upper one) to the exact ``a z + b``: coefficient
    change ``d`` on ``h_j``, constant change ``db + d c_j``, input coefficients ``A_in + d
    M_j`` (``h = M x + c``), so its bound is the parent's plus ``db + d c_j + sum_i [d M_ji
    mid_i - (|A_in,i + d M_ji| - |A_in,i|) rad_i]`` over ``j``'s fan-in (the box's centre and
    radius): the same number a trial pass with the parent's parameters computes."""

    def __init__(self, P):
        self.maps = {}  # split node index -> (M, c)
        for k, (name, rn) in enumerate(zip(P.split_nodes, P.split_rules)):
            if hasattr(rule_of(rn), "split_line"):
                m = affine_prefix(P.graph, name)
                if m is not None:
                    self.maps[k] = m
        self.rules = {k: P.split_rules[k] for k in self.maps}
        self.mid = (np.asarray(P.lo, dtype=np.float64) + P.hi).ravel() / 2
        self.rad = (np.asarray(P.hi, dtype=np.float64) - P.lo).ravel() / 2

    def capture_names(self):
        return [rn.name for rn in self.rules.values()]

    def lower(self, P, res, b, k, j, side):
        """``(n, K_all)`` lower bounds of the children ``(b, k, j, side)`` (arrays ``(n,)``; ``+inf``
        on rows the parent's pass did not bound), or None where a candidate is not covered
        (row ``i`` all NaN)."""
        cap = res.get("capture")
        n = len(b)
        out = np.full((n, len(P.b)), np.nan)
        if cap is None or cap.get("<input>") is None:
            return out
        rows = cap["rows"]
        A_in, low = cap["<input>"], cap["<low>"]
        for i in range(n):
            kk = int(k[i])
            if kk not in self.maps:
                continue
            rn = self.rules[kk]
            A = cap.get(rn.name)
            if A is None:
                continue
            M, c = self.maps[kk]
            jj, bb = int(j[i]), int(b[i])
            a_r = A[bb].reshape(A.shape[1], -1)[:, jj]  # (K',)
            aL, bL, aU, bU = (np.broadcast_to(v, A.shape)[bb].reshape(A.shape[1], -1)[:, jj] for v in res["lines"][rn.name])
            pos, neg = np.maximum(a_r, 0), np.minimum(a_r, 0)
            a_c, b_c = rule_of(rn).split_line(rn, int(side[i]))
            d = a_r * a_c - (pos * aL + neg * aU)
            db = a_r * b_c - (pos * bL + neg * bU)
            lo_, hi_ = M.indptr[jj], M.indptr[jj + 1]
            cols, w = M.indices[lo_:hi_], M.data[lo_:hi_]
            old = A_in[bb][:, cols]  # (K', m)
            dA = d[:, None] * w[None]
            conc = (dA * self.mid[cols]).sum(1) - ((np.abs(old + dA) - np.abs(old)) * self.rad[cols]).sum(1)
            out[i] = np.inf
            out[i, rows] = low[bb] + db + d * c[jj] + conc
        return out
