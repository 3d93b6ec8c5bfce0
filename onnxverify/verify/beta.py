"""Bounding a batch of subdomains with split constraints (beta-CROWN, Wang et al. 2021).

A subdomain is the input box plus split constraints ``side (h_j - t) >= 0`` on neurons of
*split nodes* (inputs of :attr:`~onnxverify.ops.base.OpRule.splittable` rules: ``h >= t`` for ``side =
+1``, ``h <= t`` for ``-1``). Its intermediate bounds are the root's, clamped by its splits
(the split neurons' relaxations become exact on their piece). The constraints enter the
backward pass as Lagrangian terms (the ``extra`` hook): for multipliers ``beta >= 0``,

    min_{x in D} f(x)  >=  min_{x in box} [ f~(x) - sum beta side (h(x) - t) ],

where ``f~`` is the relaxed network (valid on ``D``) and the subtracted terms are ``<= 0`` on
``D``. Every ``beta >= 0`` and every line parameter in ``[0, 1]`` gives a sound bound; both
are optimised per subdomain and per spec row by projected Adam. Subdomains are bounded
many at once along the engine's batch axis.

Shapes: ``B`` subdomains, ``K`` spec rows, ``D`` splits per subdomain (padded with node -1),
``J`` disjuncts, ``A`` line parameters per row (the neurons of all optimisable nodes that are
undecided at the root, flattened).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..bounds.backward import backward
from ..bounds.engine import LinearEngine
from ..bounds.optimized import Adam, alpha_relax, optimizable
from ..backend import get_backend
from ..ops import rule_of
from ..specs.input_sets import Box
from .refresh import crossed, refreshed_bounds

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
            if rule.splittable and len(n.inputs) == 1 and n.inputs[0] not in self.split_nodes:
                self.split_nodes.append(n.inputs[0])
                self.split_rules.append(n)
        self.opt_nodes = [n for n in g.computed if optimizable(n) and n.name in g.ancestors(g.output)]
        # line parameters only for the neurons undecided at the root: a subdomain's bounds lie
        # inside the root's, so the others keep their fixed lines in every subdomain
        self.layout, off = [], 0
        for n in self.opt_nodes:
            free = np.arange(n.size)
            if n.inputs[0] in self.root:
                lo, hi = (np.asarray(v, dtype=np.float64) for v in self.root[n.inputs[0]])
                free = np.flatnonzero(np.ravel(rule_of(n).undecided(NP, n, lo, hi)))
            for c in range(rule_of(n).alpha_count):
                self.layout.append((n.name, c, tuple(n.shape), off, free))
                off += len(free)
        self.n_alpha = off
        self._free_t = {}  # node name -> its free indices on the torch side

    def disjunct(self, j: int):
        """Disjunct ``j`` alone: ``(problem with its rows only, their indices (K_j,))`` (a
        case is proved when each of its disjuncts is, so each can get its own search)."""
        m = np.flatnonzero(self.owner == j)
        P = replace(self, R=self.R[m], b=self.b[m], owner=np.zeros(len(m), dtype=np.int64))
        P._base = getattr(self, "_base", None)  # the unsplit interval pass does not depend on the rows
        return P, m

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

    def clamped_bounds(self, splits, propagate: bool = True):
        """Bounds of every node on each subdomain: ``{name: (lo, hi)}`` NumPy ``(B, *shape)``
        (the input box included), and ``empty (B,)``.

        With ``propagate``: one interval pass through the graph (the rules' interval
        methods), in which each node's interval is intersected with the root's bounds (valid
        on the whole box) and a split node's with its split constraints: so the layers after
        a split get (IBP-)tighter bounds, the layers before keep the root's. Without: the
        root's bounds (and, for nodes the root has none of, one interval pass of the
        unsplit box, computed once) with each split node clamped by its split constraints:
        no pass per subdomain, never tighter. Either way every interval holds for every
        input of the subdomain; one with ``lo > hi`` (beyond rounding) proves the
        subdomain holds no input (``empty``). Empty subdomains get the root's bounds
        (finite, never used)."""
        node, idx, side, t = splits
        g = self.graph
        B = node.shape[0]
        if not propagate:
            if getattr(self, "_base", None) is None:
                one = (np.full((1, 0), -1), np.zeros((1, 0), int), np.zeros((1, 0), int), np.zeros((1, 0)))
                self._base = self.clamped_bounds(one, True)[0]
            cur, empty = {}, np.zeros(B, dtype=bool)
            for name, (lo, hi) in self._base.items():
                shape = (B,) + lo.shape[1:]
                if name not in self.split_nodes:
                    cur[name] = (np.broadcast_to(lo, shape), np.broadcast_to(hi, shape))
                    continue
                k = self.split_nodes.index(name)
                lo, hi = self._clamp(k, B, np.broadcast_to(lo, shape), np.broadcast_to(hi, shape), splits)
                empty |= crossed(lo, hi)
                cur[name] = (lo, np.maximum(hi, lo))
            return self.restore_empty(cur, empty, B)
        cur = {g.input.name: self.input_box(B)}
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
                lo, hi = self._clamp(self.split_nodes.index(n.name), B, lo, hi, splits)
            empty |= crossed(lo, hi)
            cur[n.name] = (lo, np.maximum(hi, lo))
        return self.restore_empty(cur, empty, B)

    def input_box(self, B):
        """The input box repeated for ``B`` subdomains: ``(lo, hi)`` NumPy ``(B, *input_shape)``."""
        shape = (1,) + self.graph.input_shape
        return np.repeat(self.lo.reshape(shape), B, axis=0), np.repeat(self.hi.reshape(shape), B, axis=0)

    def _clamp(self, k, B, lo, hi, splits):
        """``lo, hi (B, *shape)`` of split node ``k`` intersected with the split constraints."""
        node, idx, side, t = splits
        shape = lo.shape
        lo, hi = lo.reshape(B, -1).copy(), hi.reshape(B, -1).copy()
        for s_, arr, fn in ((1, lo, np.maximum), (-1, hi, np.minimum)):
            bb, dd = np.nonzero((node == k) & (side == s_))
            fn.at(arr, (bb, idx[bb, dd]), t[bb, dd])
        return lo.reshape(shape), hi.reshape(shape)

    def restore_empty(self, cur, empty, B):
        """``cur`` with the root's bounds on the ``empty (B,)`` subdomains (finite, never used)."""
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
    """``(B, K, A)`` tensor -> ``{node: tuple of (B, K, *shape)}`` (0 at the neurons without
    a parameter: their lines do not read it)."""
    out = {}
    B, K = flat.shape[:2]
    for name, c, shape, off, free in P.layout:
        part = flat[:, :, off:off + len(free)]
        N = int(np.prod(shape))
        if len(free) < N:
            idx = P._free_t.get(name)
            if idx is None or idx.device != part.device:
                idx = P._free_t[name] = bk.xp.as_tensor(free, device=part.device)
            part = bk.xp.zeros((B, K, N), dtype=part.dtype, device=part.device).index_copy(2, idx, part)
        out.setdefault(name, []).append(part.reshape((B, K) + shape))
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


def _on_device(bk, a, dtype):
    """``a (B, *shape)`` (NumPy) as a backend array; bounds every subdomain shares (a
    broadcast view: stride 0 on the batch axis) are converted once and expanded."""
    if a.shape[0] > 1 and a.strides[0] == 0:
        return bk.broadcast_to(bk.asarray(a[:1], dtype=dtype), a.shape)
    return bk.asarray(a, dtype=dtype)


class _Pass:
    """The output pass of one batch in one dtype: engine (bounds of ``bounds``), recording
    box and spec rows ``lam (B, K, *out_shape)``."""

    def __init__(self, bk, P, bounds, empty, rows, dtype):
        g = P.graph
        B = len(empty)
        self.bk, self.P, self.dtype, self.B, self.K = bk, P, dtype, B, len(rows)
        self.box = _RecordingBox(*P.input_box(B))
        env = {g.input.name: (bk.asarray(self.box.lower, dtype=dtype), bk.asarray(self.box.upper, dtype=dtype))}
        for name, (lo, hi) in bounds.items():
            if empty.any():  # empty subdomains get a harmless interval (their bound is +inf anyway)
                lo = np.where(empty.reshape((B,) + (1,) * (lo.ndim - 1)), np.minimum(lo, hi), lo)
            env[name] = (_on_device(bk, lo, dtype), _on_device(bk, hi, dtype))
        self.eng = LinearEngine(g, self.box, bk, dtype, P.strategy, env)
        self.eng.bounds.update(env)
        out = g[g.output]
        self.lam = bk.asarray(np.repeat(P.R[rows].reshape((1, self.K) + tuple(out.shape)), B, axis=0), dtype=dtype)

    def lower(self, splits, alpha, beta, zs=None, capture=None):
        """``(B, K)`` lower bounds for line parameters ``alpha (B, K, A)`` and multipliers
        ``beta (B, D, K)``; with ``zs`` (a dict), zero offsets of every node's intercepts
        that require grad are added (their gradients are the branching scores);
        ``capture``: see :func:`~onnxverify.bounds.backward.backward` (plus ``"<low>"``, the
        bounds returned)."""
        bk, P = self.bk, self.P
        torch = bk.xp
        relax = alpha_relax(bk, P.graph, self.eng, _alpha_dict(bk, P, alpha))
        if zs is not None:
            for name, (aL, bL, aU, bU) in relax.items():
                zL = torch.zeros(aL.shape, dtype=aL.dtype, requires_grad=True)
                zU = torch.zeros(aL.shape, dtype=aL.dtype, requires_grad=True)
                zs[name] = (zL, zU)
                relax[name] = (aL, bL + zL, aU, bU + zU)
        extra, const = _lagrangian(bk, P, splits, beta, self.B, self.K, self.dtype)
        low, _ = backward(self.eng, P.graph.output, self.lam, upper=False, relax=relax, extra=extra,
                          capture=capture)
        if capture is not None:
            capture["<low>"] = low + const
        return low + const

    def lines(self, alpha):
        bk, P = self.bk, self.P
        return {n: tuple(np.asarray(bk.to_numpy(v.detach() if hasattr(v, "detach") else v)) for v in r)
                for n, r in alpha_relax(bk, P.graph, self.eng, _alpha_dict(bk, P, alpha.detach())).items()}


def bound_domains(bk, P: BabProblem, doms: DomainBatch, root_alpha, iters: int = 10, lr_alpha: float = 0.1,
                  lr_beta: float = 0.05, scores: bool = False, deadline=None, rows=None, fast_dtype=None,
                  sound: bool = True, propagate: bool = True, refresh: bool = False, capture=None):
    """Optimise and bound ``doms``. Returns a dict: ``lower (B, K)`` (``+inf`` rows for empty
    subdomains), ``alpha (B, K, A)`` and ``beta (B, D, K)`` (float32 warm starts),
    ``bounds`` (the clamped intermediate bounds, NumPy; ``propagate``: see
    :meth:`BabProblem.clamped_bounds`), ``empty (B,)``, ``x`` (the input minimising each
    row's last linear bound, ``(B, K, n_in)``), and with ``scores`` the gradients ``{node
    name: (gL, gU)}`` of the objective with respect to each optimisable node's lower/upper
    intercepts ``(B, K', *shape)`` (for branching) and the lines ``{node name: (aL, bL, aU,
    bU)}`` they were taken at.

    Only the rows of disjuncts open in some subdomain are bounded (``rows``: their indices,
    default from ``doms.open``; ``K'`` of them); the others belong to disjuncts already
    proved in every subdomain of the batch and get ``lower = +inf`` (proved) and their old
    parameters.

    The Adam steps run in ``fast_dtype`` (default ``P.dtype``). When that is coarser than
    ``P.dtype``, the parameters of each subdomain's best iterate are evaluated once more in
    ``P.dtype`` and that pass alone gives ``lower`` (and the scores): the bounds are as
    sound as ``P.dtype``'s. ``sound=False`` (ranking trial splits) skips that pass and
    returns the ``fast_dtype`` bounds without gradients. ``refresh``: the split nodes after
    each subdomain's first split are re-bounded by CROWN on it first
    (:func:`~onnxverify.verify.refresh.refreshed_bounds`). ``capture``: node names whose lower-pass
    coefficients the pass that gives the scores stores (see
    :func:`~onnxverify.bounds.backward.backward`): NumPy in ``res["capture"]``, with
    ``"<low>"`` its bounds and ``"rows"`` the rows bounded."""
    import time

    torch = bk.xp
    B, K_all = len(doms), len(P.b)
    if rows is None:
        rows = np.flatnonzero((doms.open[:, :, None] & P.disj_mask[None]).any(axis=(0, 1)))
    rows = np.asarray(rows, dtype=np.int64)
    fast = np.dtype(P.dtype if fast_dtype is None else fast_dtype)
    final = np.dtype(P.dtype) != fast and sound  # a last pass in P.dtype gives the bounds
    bounds, empty = P.clamped_bounds(doms.splits, propagate)
    if refresh:
        bounds, empty = refreshed_bounds(P, bounds, empty, doms.splits)
    ps = _Pass(bk, P, bounds, empty, rows, fast)
    a0 = doms.alpha if doms.alpha is not None else np.repeat(root_alpha, B, axis=0)
    alpha = bk.asarray(np.asarray(a0[:, rows], dtype=np.float64), dtype=fast)
    beta = bk.asarray(np.asarray(doms.beta[:, :, rows], dtype=np.float64), dtype=fast)
    grads = iters > 0 or (scores and not final)
    alpha.requires_grad_(grads)
    beta.requires_grad_(grads)
    open_t = bk.asarray(doms.open.astype(np.float64), dtype=fast)  # (B, J)
    mask_t = bk.asarray(P.disj_mask[:, rows].astype(np.float64), dtype=fast)  # (J, K)
    b_t = bk.asarray(P.b[rows], dtype=fast)
    opt = Adam([([alpha], lr_alpha)] + ([([beta], lr_beta)] if beta.shape[1] else []), decay=0.98)
    keep = bk.asarray((~empty).astype(np.float64), dtype=fast)[:, None]
    best = None
    best_alpha, best_beta = alpha.detach().clone(), beta.detach().clone()
    zs = {} if scores and not final else None
    cap = dict.fromkeys(capture) if capture is not None else None
    with torch.set_grad_enabled(grads):
        for it in range(0 if final and iters == 0 else iters + 1):
            last = it == iters or (deadline is not None and time.monotonic() >= deadline)
            low = ps.lower(doms.splits, alpha, beta, zs if last else None, cap if last and not final else None)
            obj = _objective(low, b_t, mask_t, open_t, keep)
            with torch.no_grad():
                if best is None:
                    best = low.detach().clone()
                else:  # per row (its bound depends on its own parameters only), the best iterate's
                    better = low.detach() > best
                    best = torch.where(better, low.detach(), best)
                    best_alpha = torch.where(better[:, :, None], alpha.detach(), best_alpha)
                    best_beta = torch.where(better[:, None, :], beta.detach(), best_beta)
            if last:
                if zs is not None:
                    obj.backward()
                break
            opt.zero_grad()
            (-obj).backward()
            opt.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
                beta.clamp_(min=0.0)
    if final:  # the sound bounds: the best parameters in P.dtype
        ps = _Pass(bk, P, bounds, empty, rows, P.dtype)
        alpha_f, beta_f = best_alpha.to(ps.lam.dtype), best_beta.to(ps.lam.dtype)
        zs = {} if scores else None
        with torch.set_grad_enabled(scores):
            best = ps.lower(doms.splits, alpha_f, beta_f, zs, cap)
            if scores:
                _objective(best, bk.asarray(P.b[rows], dtype=P.dtype), mask_t.to(best.dtype),
                           open_t.to(best.dtype), keep.to(best.dtype)).backward()
        best = best.detach()
    lower = np.full((B, K_all), np.inf)
    lower[:, rows] = np.asarray(bk.to_numpy(best), dtype=np.float64)
    lower[empty] = np.inf
    A = ps.box.last  # (B, K, n_in): the last pass's input coefficients
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
    if cap is not None:
        res["capture"] = {k: None if v is None else np.asarray(bk.to_numpy(v.detach()), dtype=np.float64)
                          for k, v in cap.items()}
        res["capture"]["rows"] = rows
    if scores:
        res["scores"] = {n: tuple(None if z.grad is None else np.asarray(bk.to_numpy(z.grad)) for z in zz)
                         for n, zz in zs.items()}
        res["lines"] = ps.lines(alpha_f if final else alpha)
    return res


def _objective(low, b_t, mask_t, open_t, keep):
    """Sum over subdomains and open disjuncts of ``min(margin, 0)`` (scalar)."""
    torch = _torch()
    diff = low - b_t  # (B, K)
    margin = torch.where(mask_t[None] > 0, diff[:, None, :], torch.full_like(diff[:, None, :], -np.inf)).amax(2)
    # disjuncts closed everywhere may have no bounded row (margin -inf): where, not a product
    return torch.where((open_t * keep) > 0, torch.clamp(margin, max=0.0), torch.zeros_like(margin)).sum()


def _torch():
    import torch

    return torch
