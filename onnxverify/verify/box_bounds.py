"""Bounds of spec rows over many input boxes at once, for input splitting.

:class:`BoxBounder` bounds ``N`` boxes in one call along the bound engine's batch axis: one
interval pass, the intermediate bounds of the chosen linear method (CROWN passes only for the
neurons still undecided on each box), then one backward pass of the spec rows. A child box
lies inside its parent, so the parent's intermediate bounds hold on the child too: they are
intersected with the child's at every bound node (in the interval pass, before the linear
passes), which keeps every neuron that was stable on the parent stable and spares its
backward row. Each call also returns the input coefficients ``A`` of the spec rows' linear
lower bounds: ``|A| * width`` is the sensitivity the branching heuristic splits on, and the
corner minimising each row's linear bound is a counterexample candidate. :meth:`BoxBounder.joint`
then bounds per-box combinations of the rows (one backward pass on the same intermediate
bounds): for a disjunct ``R y <= b`` with several rows and weights ``lam >= 0``, a lower
bound of ``lam @ R y`` above ``lam @ b`` proves it infeasible, and CROWN on the combined
row is tighter than the combination of the rows' own bounds (each neuron's relaxation is
chosen once, for the combination; on the robot net of reach_prob_density it proved all 300
of the worst boxes where combining the rows' bounds proved 48).

Shapes: ``N`` boxes, ``n`` flat inputs, ``K`` spec rows.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_backend
from ..bounds import fold_spec_interval
from ..bounds.backward import backward
from ..bounds.engine import intersect
from ..bounds.methods import intermediate_bounds, parse_method
from ..bounds.plan import plan_of
from ..ops import rule_of
from ..specs.input_sets import Box

__all__ = ["BoxBounder", "outward32", "disjunct_dual", "joint_proofs"]


class _RecordingBox(Box):
    """A box that keeps the input coefficients of the last pass it concretised."""

    last = None

    def concretize(self, bk, A, c, upper):
        self.last = (A, c)
        return super().concretize(bk, A, c, upper)


def outward32(lo, hi):
    """Float32 copies of float64 bounds rounded outwards (``lo`` down, ``hi`` up): still sound."""
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    lo32 = np.where(lo32.astype(np.float64) > lo, np.nextafter(lo32, np.float32(-np.inf)), lo32)
    hi32 = np.where(hi32.astype(np.float64) < hi, np.nextafter(hi32, np.float32(np.inf)), hi32)
    return lo32, hi32


class BoxBounder:
    """Lower bounds of ``R @ y`` over boxes, by ``method`` (``ibp`` or a linear method whose
    intermediate bounds come from :func:`~onnxverify.bounds.methods.intermediate_bounds`;
    not ``alpha-crown``). ``R (K, n_out)``; float64 below 1,024 inputs, else float32."""

    def __init__(self, graph, R, method="crown", strategy="adaptive", dtype=np.float64, max_memory=None):
        if parse_method(method).intermediate == "alpha":
            method = "crown"
        self.g, self.R, self.method, self.strategy = graph, np.asarray(R, dtype=np.float64), method, strategy
        self.dtype, self.max_memory = dtype, max_memory
        self.bk = get_backend("numpy")
        self.keep = list(plan_of(graph).bound_nodes)  # the nodes whose bounds children inherit
        self.sizes = {n: int(graph[n].size) for n in self.keep}
        self.in_shape = tuple(graph.input_shape)
        self._last = None  # (engine, box) of the last call, for joint()

    def bytes_per_box(self) -> int:
        """A rough peak of one box's share of a call: the widest backward pass (rows of the
        largest bound node times the largest node) in a few float64 arrays."""
        biggest = max((n.size for n in self.g.nodes), default=1)
        rows = max([len(self.R)] + list(self.sizes.values()))
        return int(rows * max(biggest, self.g.input.size) * 8 * 10)

    def stored_bytes_per_box(self) -> int:
        """What a queued box keeps: its intermediate bounds (float32, two per neuron)."""
        return 8 * sum(self.sizes.values()) + 16 * self.g.input.size

    def _intervals(self, box, parent):
        """Interval bounds of every node on each box, intersected with ``parent``'s."""
        bk, g, dt = self.bk, self.g, self.dtype
        env = {g.input.name: (bk.asarray(box.lower, dtype=dt), bk.asarray(box.upper, dtype=dt))}
        N = box.lower.shape[0]
        for n in g.computed:
            lo, hi = rule_of(n).interval(bk, n, *[env[i] for i in n.inputs])
            lo = np.broadcast_to(np.asarray(lo, dtype=dt), (N,) + tuple(n.shape))
            hi = np.broadcast_to(np.asarray(hi, dtype=dt), (N,) + tuple(n.shape))
            if parent is not None and n.name in parent:
                p_lo, p_hi = parent[n.name]
                # both hold on the child box; where rounding makes them cross, the hull
                lo, hi = intersect(bk, (lo, hi), (p_lo.reshape(lo.shape), p_hi.reshape(hi.shape)))
            env[n.name] = (lo, hi)
        return env

    def __call__(self, lo, hi, rows=None, parent=None):
        """Bound boxes ``lo, hi (N, n)`` on spec rows ``rows`` (indices; default all).

        ``parent``: ``{bound node: (lo, hi) (N, size)}`` valid on each box (e.g. its parent's),
        or None. Returns ``(lower (N, K'), lines, bounds)`` where ``bounds`` are the boxes'
        intermediate bounds in the same form as ``parent`` (float32, rounded outwards) and
        ``lines = (A (N, K', n), c (N, K'))`` the rows' linear lower bounds ``A x + c`` valid
        on each box (None for IBP)."""
        g, bk, dt = self.g, self.bk, self.dtype
        self._last = None
        N = lo.shape[0]
        rows = np.arange(len(self.R)) if rows is None else np.asarray(rows)
        R = self.R[rows]
        box = _RecordingBox(lo.reshape((N,) + self.in_shape), hi.reshape((N,) + self.in_shape))
        env = self._intervals(box, parent)
        C = np.ascontiguousarray(np.broadcast_to(R, (N,) + R.shape))
        lower = np.asarray(fold_spec_interval(bk, g, env, C, dt)[0], dtype=np.float64)
        lines = None
        if self.method == "ibp":
            best = env
        else:
            eng = intermediate_bounds(g, box, self.method, self.strategy, bk, dt, env, self.max_memory)
            lam = bk.asarray(C.reshape((N, len(rows)) + tuple(g[g.output].shape)), dtype=dt)
            box.last = None
            low, _ = backward(eng, g.output, lam, depth=eng.out_depth, upper=False)
            lower = np.maximum(lower, np.asarray(low, dtype=np.float64))
            if box.last is not None and eng.out_depth is None:
                A, c = box.last
                lines = (np.asarray(A, dtype=np.float64).reshape(N, len(rows), -1),
                         np.asarray(c, dtype=np.float64).reshape(N, len(rows)))
            best = {n: eng.best(n) for n in self.keep}
            self._last = (eng, box)
        out = {}
        for n in self.keep:
            l_, h_ = best[n]
            out[n] = outward32(np.asarray(l_, dtype=np.float64).reshape(N, -1),
                               np.asarray(h_, dtype=np.float64).reshape(N, -1))
        return lower, lines, out

    def joint(self, C):
        """Lower bounds of per-box rows ``C (N, M, n_out)`` over the boxes of the last call
        (its intermediate bounds; a linear method only, else None). Returns ``(lower (N, M),
        A (N, M, n))``: the bounds and the input coefficients of their linear bounds (None
        when the pass does not reach the input)."""
        if self._last is None:
            return None
        eng, box = self._last
        g, N = self.g, C.shape[0]
        lam = self.bk.asarray(np.ascontiguousarray(C).reshape((N, C.shape[1]) + tuple(g[g.output].shape)),
                              dtype=self.dtype)
        box.last = None
        low, _ = backward(eng, g.output, lam, depth=eng.out_depth, upper=False)
        A = None
        if box.last is not None and eng.out_depth is None:
            A = np.asarray(box.last[0], dtype=np.float64).reshape(N, C.shape[1], -1)
        return np.asarray(low, dtype=np.float64).reshape(N, -1), A


def _project_simplex(v):
    """Rows of ``v (M, m)`` projected onto the probability simplex (Euclidean)."""
    m = v.shape[1]
    u = -np.sort(-v, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    ks = np.arange(1, m + 1)
    cond = u - css / ks > 0
    r = m - 1 - np.argmax(cond[:, ::-1], axis=1)  # last index where cond holds
    theta = css[np.arange(len(v)), r] / (r + 1)
    return np.maximum(v - theta[:, None], 0.0)


def disjunct_dual(A, c, b, owner, n_disj, lo, hi, iters=30):
    """Joint bound of each disjunct's rows on each box.

    Each row ``k`` has a linear lower bound ``A_k x + c_k <= (R y)_k`` on its box ``lo, hi
    (N, n)``; disjunct ``d`` (rows ``owner == d``, all to hold: ``R y <= b``) is infeasible
    on the box when no ``x`` there satisfies ``A_k x + c_k <= b_k`` for all its rows. For any
    ``lam`` in the simplex, ``g(lam) = min_{x in box} sum_k lam_k (A_k x + c_k - b_k) > 0``
    proves that (a feasible ``x`` would make the sum ``<= 0``); one-hot ``lam`` is the row's
    own bound. ``g`` is concave: projected supergradient ascent from the best row.

    ``A (N, K, n)``, ``c (N, K)``, ``b (K,)``, ``owner (K,)``. Returns ``g (N, n_disj)`` (the
    best found; ``-inf`` for a disjunct without rows), ``coef (N, n_disj, n)`` (the
    combined coefficients at that ``lam``), ``scale (N, n_disj)``, the magnitude of the
    terms summed (for a relative rounding margin), and that ``lam (N, n_disj, K)`` (zero
    outside each disjunct's rows; on the simplex)."""
    N, K, n = A.shape
    G = np.full((N, n_disj), -np.inf)
    coef = np.zeros((N, n_disj, n))
    scale = np.ones((N, n_disj))
    lam_out = np.zeros((N, n_disj, K))
    lo3, hi3 = lo[:, None, :], hi[:, None, :]
    for d in range(n_disj):
        rows = np.flatnonzero(owner == d)
        if len(rows) == 0:
            continue
        Ad, cd = A[:, rows], c[:, rows] - b[rows][None]
        single = cd + np.minimum(Ad * lo3, Ad * hi3).sum(axis=2)  # (N, m)
        arg = np.argmax(single, axis=1)
        best = single[np.arange(N), arg]
        lam = np.zeros((N, len(rows)))
        lam[np.arange(N), arg] = 1.0
        best_lam = lam.copy()
        if len(rows) > 1:
            for t in range(iters):
                a = np.einsum("nm,nmi->ni", lam, Ad)
                x = np.where(a > 0, lo, hi)
                val = (lam * cd).sum(axis=1) + (a * x).sum(axis=1)
                up = val > best
                best = np.where(up, val, best)
                best_lam[up] = lam[up]
                grad = cd + np.einsum("nmi,ni->nm", Ad, x)
                grad = grad / (np.linalg.norm(grad, axis=1, keepdims=True) + 1e-30)
                lam = _project_simplex(lam + (0.5 / np.sqrt(t + 1.0)) * grad)
        G[:, d] = best
        lam_out[:, d, rows] = best_lam
        coef[:, d] = np.einsum("nm,nmi->ni", best_lam, Ad)
        mag = np.abs(cd) + np.abs(b[rows])[None] + (np.abs(Ad) * np.maximum(np.abs(lo3), np.abs(hi3))).sum(axis=2)
        scale[:, d] = 1.0 + (best_lam * mag).sum(axis=1)
    return G, coef, scale, lam_out


def joint_proofs(bounder, open_, lam, R, b, owner, tol):
    """Disjuncts proved by CROWN on their combined row: for each disjunct ``d`` with
    several rows open on some box, the row ``lam[:, d] @ R`` per box (``lam`` from
    :func:`disjunct_dual`) is bounded over the boxes of ``bounder``'s last call
    (:meth:`BoxBounder.joint`); ``lam >= 0`` and ``R y <= b`` on the disjunct give
    ``lam @ R y <= lam @ b``, so a lower bound above ``lam @ b`` (by the relative margin
    ``tol``) proves it infeasible on that box.

    ``open_ (N, D)``, ``lam (N, D, K)``, ``R (K, n_out)``, ``b (K,)``, ``owner (K,)``.
    Returns ``(N, D)`` booleans (False where not tried)."""
    N, D = open_.shape
    out = np.zeros((N, D), dtype=bool)
    multi = [d for d in range(D) if (owner == d).sum() > 1 and open_[:, d].any()]
    if not multi:
        return out
    lam_m = lam[:, multi]  # (N, M, K)
    got = bounder.joint(np.einsum("nmk,ko->nmo", lam_m, R))
    if got is None:
        return out
    low = got[0]
    lb = lam_m @ b  # (N, M)
    out[:, multi] = low - lb > tol * (1.0 + np.abs(lb) + np.abs(low))
    return out
