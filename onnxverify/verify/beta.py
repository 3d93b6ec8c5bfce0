"""Bounding a batch of subdomains with split constraints (beta-CROWN, Wang et al. 2021).

A subdomain is the input box plus split constraints ``side (h_j - t) >= 0`` on neurons of
*split nodes* (inputs of nonlinear rules with ``branch_points``: ``h >= t`` for ``side =
+1``, ``h <= t`` for ``-1``). Its intermediate bounds are the root's, clamped by its splits
(the split neurons' relaxations become exact on their piece). The constraints enter the
backward pass as Lagrangian terms (the ``extra`` hook): for multipliers ``beta >= 0``,

    min_{x in D} f(x)  >=  min_{x in box} [ f~(x) - sum beta side (h(x) - t) ],

where ``f~`` is the relaxed network (valid on ``D``) and the subtracted terms are ``<= 0`` on
``D``. Every ``beta >= 0`` and every line parameter in ``[0, 1]`` gives a sound bound; both
are optimised per subdomain and per spec row by projected Adam. Subdomains are bounded
many at once along the engine's batch axis.

Shapes: ``B`` subdomains, ``K`` spec rows, ``D`` splits per subdomain (padded with node -1),
``J`` disjuncts, ``A`` line parameters per row (all optimisable nodes flattened).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bounds.backward import backward
from ..bounds.engine import LinearEngine
from ..bounds.optimized import Adam, alpha_relax, optimizable
from ..backend import get_backend
from ..ops import rule_of
from ..specs.input_sets import Box

__all__ = ["BabProblem", "DomainBatch", "bound_domains"]

NP = get_backend("numpy")


class _RecordingBox(Box):
    """A box that remembers the input coefficients of the last pass it concretised (its
    minimiser is a counterexample candidate)."""

    last = None

    def concretize(self, bk, A, c, upper):
        self.last = A.detach()
        return super().concretize(bk, A, c, upper)


@dataclass
class BabProblem:
    """One input case of a property: the box ``lo, hi (n_in,)``, the spec rows ``R (K, n_out)``
    with thresholds ``b (K,)`` and their disjunct ``owner (K,)`` (a disjunct ``A y <= b`` is
    infeasible once one of its rows has ``lower > b``); ``root``: intermediate bounds
    ``{name: (lo, hi)}`` ``(1, *shape)``; ``tol``: relative proof margin."""

    graph: object
    lo: np.ndarray
    hi: np.ndarray
    R: np.ndarray
    b: np.ndarray
    owner: np.ndarray
    root: dict
    strategy: str = "adaptive"
    dtype: object = np.float64
    tol: float = 1e-9

    def __post_init__(self):
        g = self.graph
        self.n_disj = int(self.owner.max()) + 1 if len(self.owner) else 0
        self.disj_mask = np.stack([self.owner == j for j in range(self.n_disj)])  # (J, K)
        self.split_nodes, self.split_rules = [], []  # bound node names, their splitting consumer
        for n in g.computed:
            rule = rule_of(n)
            if hasattr(rule, "branch_points") and len(n.inputs) == 1 and n.inputs[0] not in self.split_nodes:
                self.split_nodes.append(n.inputs[0])
                self.split_rules.append(n)
        self.opt_nodes = [n for n in g.computed if optimizable(n) and n.name in g.ancestors(g.output)]
        self.layout, off = [], 0
        for n in self.opt_nodes:
            for c in range(rule_of(n).alpha_count):
                self.layout.append((n.name, c, tuple(n.shape), off))
                off += n.size
        self.n_alpha = off

    def proved_rows(self, lower):
        """``(N, K)``: rows whose lower bound beats its threshold by the proof margin."""
        b = self.b[None]
        return lower > b + self.tol * (1 + np.abs(b) + np.abs(lower))

    def disjunct_margins(self, lower):
        """``(N, J)``: per disjunct, its best row's ``lower - b``."""
        diff = lower - self.b[None]
        return np.where(self.disj_mask[None], diff[:, None, :], -np.inf).max(axis=2)

    def proved_disjuncts(self, lower):
        return (self.proved_rows(lower)[:, None, :] & self.disj_mask[None]).any(axis=2)

    def clamped_bounds(self, splits):
        """Bounds of every node on each subdomain: ``{name: (lo, hi)}`` NumPy ``(B, *shape)``
        (the input box included), and ``empty (B,)``.

        One interval pass through the graph (the rules' interval methods), in which each
        node's interval is intersected with the root's bounds (valid on the whole box) and a
        split node's with its split constraints: so the layers after a split get tighter
        bounds, the layers before keep the root's. Every interval holds for every input of
        the subdomain; one with ``lo > hi`` (beyond rounding) proves the subdomain holds no
        input (``empty``). Empty subdomains get the root's bounds (finite, never used)."""
        node, idx, side, t = splits
        g = self.graph
        B = node.shape[0]
        cur = {g.input.name: (np.repeat(self.lo.reshape((1,) + g.input_shape), B, axis=0),
                              np.repeat(self.hi.reshape((1,) + g.input_shape), B, axis=0))}
        empty = np.zeros(B, dtype=bool)
        for n in g.computed:
            lo, hi = (np.asarray(v, dtype=np.float64) for v in
                      rule_of(n).interval(NP, n, *[cur[i] for i in n.inputs]))
            lo, hi = np.broadcast_to(lo, (B,) + tuple(n.shape)), np.broadcast_to(hi, (B,) + tuple(n.shape))
            if n.name in self.root:
                r_lo, r_hi = self.root[n.name]
                lo = np.maximum(lo, np.asarray(r_lo, dtype=np.float64))
                hi = np.minimum(hi, np.asarray(r_hi, dtype=np.float64))
            if n.name in self.split_nodes:
                k = self.split_nodes.index(n.name)
                lo, hi = lo.reshape(B, -1).copy(), hi.reshape(B, -1).copy()
                for s_, arr, fn in ((1, lo, np.maximum), (-1, hi, np.minimum)):
                    bb, dd = np.nonzero((node == k) & (side == s_))
                    fn.at(arr, (bb, idx[bb, dd]), t[bb, dd])
                lo, hi = lo.reshape((B,) + tuple(n.shape)), hi.reshape((B,) + tuple(n.shape))
            gap = (lo - hi).reshape(B, -1)
            empty |= (gap > 1e-9 * (1 + np.abs(hi).reshape(B, -1))).any(axis=1)
            cur[n.name] = (lo, np.maximum(hi, lo))
        out = {}
        for name, (lo, hi) in cur.items():
            if name in self.root and empty.any():
                e = empty.reshape((B,) + (1,) * (lo.ndim - 1))
                lo, hi = np.where(e, self.root[name][0], lo), np.where(e, self.root[name][1], hi)
            out[name] = (lo, hi)
        return out, empty


@dataclass
class DomainBatch:
    """``B`` subdomains: ``splits = (node (B, D) int, idx (B, D) int, side (B, D) int, t (B, D)
    float)`` (node -1: padding), ``beta (B, D, K)``, ``alpha (B, K, A)`` (warm starts, None:
    the root's), ``open (B, J)`` disjuncts not yet proved (children inherit proofs)."""

    splits: tuple
    beta: np.ndarray
    alpha: np.ndarray | None
    open: np.ndarray

    def __len__(self):
        return self.splits[0].shape[0]


def _alpha_dict(bk, P, flat):
    """``(B, K, A)`` tensor -> ``{node: tuple of (B, K, *shape)}``."""
    out = {}
    B, K = flat.shape[:2]
    for name, c, shape, off in P.layout:
        out.setdefault(name, []).append(flat[:, :, off:off + int(np.prod(shape))].reshape((B, K) + shape))
    return {k: tuple(v) for k, v in out.items()}


def _lagrangian(bk, P, splits, beta, B, K, dtype):
    """``extra`` coefficients ``{name: (c, None)}`` and the constant ``(B, K)`` of the split terms."""
    torch = bk.xp
    node, idx, side, t = splits
    extra = {}
    const = torch.zeros((B, K), dtype=beta.dtype)
    bb, dd = np.nonzero(node >= 0)
    if len(bb) == 0:
        return extra, const
    s = bk.asarray(side[bb, dd].astype(np.float64), dtype=dtype)
    tt = bk.asarray(t[bb, dd], dtype=dtype)
    bsel = beta[bb, dd]  # (S, K)
    const = const.index_add(0, torch.as_tensor(bb), (s * tt)[:, None] * bsel)
    for k, name in enumerate(P.split_nodes):
        m = node[bb, dd] == k
        if not m.any():
            continue
        shape = tuple(P.graph[name].shape)
        N = int(np.prod(shape))
        pos = torch.as_tensor(bb[m] * N + idx[bb[m], dd[m]])
        vals = -s[torch.as_tensor(m)][:, None] * bsel[torch.as_tensor(m)]
        flat = torch.zeros((B * N, K), dtype=beta.dtype).index_add(0, pos, vals)
        extra[name] = (flat.reshape(B, N, K).permute(0, 2, 1).reshape((B, K) + shape), None)
    return extra, const


def bound_domains(bk, P: BabProblem, doms: DomainBatch, root_alpha, iters: int = 10, lr_alpha: float = 0.1,
                  lr_beta: float = 0.05, scores: bool = False, deadline=None, rows=None):
    """Optimise and bound ``doms``. Returns a dict: ``lower (B, K)`` (``+inf`` rows for empty
    subdomains), ``alpha (B, K, A)`` and ``beta (B, D, K)`` (float32 warm starts),
    ``bounds`` (the clamped intermediate bounds, NumPy), ``empty (B,)``, ``x`` (the input
    minimising each row's last linear bound, ``(B, K, n_in)``), and with ``scores`` the
    gradients ``{node name: (gL, gU)}`` of the objective with respect to each optimisable
    node's lower/upper intercepts ``(B, K', *shape)`` (for branching).

    Only the rows of disjuncts open in some subdomain are bounded (``rows``: their indices,
    default from ``doms.open``; ``K'`` of them); the others belong to disjuncts already
    proved in every subdomain of the batch and get ``lower = +inf`` (proved) and their old
    parameters."""
    import time

    torch = bk.xp
    g, dtype = P.graph, P.dtype
    B, K_all = len(doms), len(P.b)
    if rows is None:
        rows = np.flatnonzero((doms.open[:, :, None] & P.disj_mask[None]).any(axis=(0, 1)))
    rows = np.asarray(rows, dtype=np.int64)
    K = len(rows)
    bounds, empty = P.clamped_bounds(doms.splits)
    box = _RecordingBox(np.repeat(P.lo.reshape((1,) + g.input_shape), B, axis=0),
                        np.repeat(P.hi.reshape((1,) + g.input_shape), B, axis=0))
    env = {g.input.name: (bk.asarray(box.lower, dtype=dtype), bk.asarray(box.upper, dtype=dtype))}
    for name, (lo, hi) in bounds.items():
        # empty subdomains get a harmless interval (their bound is +inf anyway)
        lo = np.where(empty.reshape((B,) + (1,) * (lo.ndim - 1)), np.minimum(lo, hi), lo)
        env[name] = (bk.asarray(lo, dtype=dtype), bk.asarray(hi, dtype=dtype))
    eng = LinearEngine(g, box, bk, dtype, P.strategy, env)
    eng.bounds.update(env)
    out = g[g.output]
    lam = bk.asarray(np.repeat(P.R[rows].reshape((1, K) + tuple(out.shape)), B, axis=0), dtype=dtype)
    a0 = doms.alpha if doms.alpha is not None else np.repeat(root_alpha, B, axis=0)
    alpha = bk.asarray(np.asarray(a0[:, rows], dtype=np.float64), dtype=dtype).requires_grad_(True)
    beta = bk.asarray(np.asarray(doms.beta[:, :, rows], dtype=np.float64), dtype=dtype).requires_grad_(True)
    open_t = bk.asarray(doms.open.astype(np.float64), dtype=dtype)  # (B, J)
    mask_t = bk.asarray(P.disj_mask[:, rows].astype(np.float64), dtype=dtype)  # (J, K)
    b_t = bk.asarray(P.b[rows], dtype=dtype)
    opt = Adam([([alpha], lr_alpha)] + ([([beta], lr_beta)] if beta.shape[1] else []), decay=0.98)
    keep = bk.asarray((~empty).astype(np.float64), dtype=dtype)[:, None]
    best = None
    best_alpha, best_beta = alpha.detach().clone(), beta.detach().clone()
    zs = {}
    for it in range(iters + 1):
        last = it == iters or (deadline is not None and time.monotonic() >= deadline)
        relax = alpha_relax(bk, g, eng, _alpha_dict(bk, P, alpha))
        if last and scores:
            for name, (aL, bL, aU, bU) in relax.items():
                zL = torch.zeros(aL.shape, dtype=aL.dtype, requires_grad=True)
                zU = torch.zeros(aL.shape, dtype=aL.dtype, requires_grad=True)
                zs[name] = (zL, zU)
                relax[name] = (aL, bL + zL, aU, bU + zU)
        extra, const = _lagrangian(bk, P, doms.splits, beta, B, K, dtype)
        low, _ = backward(eng, g.output, lam, upper=False, relax=relax, extra=extra)
        low = low + const
        diff = low - b_t  # (B, K)
        margin = torch.where(mask_t[None] > 0, diff[:, None, :], torch.full_like(diff[:, None, :], -np.inf)).amax(2)
        # disjuncts closed everywhere may have no bounded row (margin -inf): where, not a product
        obj = torch.where((open_t * keep) > 0, torch.clamp(margin, max=0.0), torch.zeros_like(margin)).sum()
        with torch.no_grad():
            cur = low.detach()
            if best is None:
                best = cur.clone()
            else:  # per subdomain, keep the parameters of the iterate with the best worst margin
                better = _worst(margin.detach(), open_t) > _worst(_margins(best - b_t, mask_t), open_t)
                best = torch.maximum(best, cur)
                best_alpha[better] = alpha.detach()[better]
                best_beta[better] = beta.detach()[better]
        if last:
            if scores:
                obj.backward()
            break
        opt.zero_grad()
        (-obj).backward()
        opt.step()
        with torch.no_grad():
            alpha.clamp_(0.0, 1.0)
            beta.clamp_(min=0.0)
    lower = np.full((B, K_all), np.inf)
    lower[:, rows] = np.asarray(bk.to_numpy(best), dtype=np.float64)
    lower[empty] = np.inf
    A = box.last  # (B, K, n_in): the last pass's input coefficients
    x = None
    if A is not None:
        lo_f, hi_f = P.lo.reshape(1, 1, -1), P.hi.reshape(1, 1, -1)
        x = np.repeat(np.repeat(lo_f, B, axis=0), K_all, axis=1)
        x[:, rows] = np.where(np.asarray(bk.to_numpy(A)) > 0, lo_f, hi_f)
    alpha_out = np.array(a0, dtype=np.float32)
    alpha_out[:, rows] = np.asarray(bk.to_numpy(best_alpha))
    beta_out = np.array(doms.beta, dtype=np.float32)
    beta_out[:, :, rows] = np.asarray(bk.to_numpy(best_beta))
    res = {"lower": lower, "alpha": alpha_out, "beta": beta_out, "bounds": bounds, "empty": empty, "x": x}
    if scores:
        res["scores"] = {n: tuple(None if z.grad is None else np.asarray(bk.to_numpy(z.grad)) for z in zz)
                         for n, zz in zs.items()}
        res["lines"] = {n: tuple(np.asarray(bk.to_numpy(v.detach() if hasattr(v, "detach") else v)) for v in r)
                        for n, r in alpha_relax(bk, g, eng, _alpha_dict(bk, P, alpha.detach())).items()}
    return res


def _margins(diff, mask_t):
    return diff[:, None, :].masked_fill(mask_t[None] <= 0, -np.inf).amax(2)


def _worst(margin, open_t):
    """Worst open disjunct margin per subdomain ``(B,)`` (``+inf`` when none is open)."""
    return margin.masked_fill(open_t <= 0, np.inf).amin(1)
