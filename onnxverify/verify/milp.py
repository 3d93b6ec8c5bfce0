"""Exact mixed-integer encodings of piecewise-linear networks, solved by HiGHS (scipy's milp).

Every node gets one variable per value, bounded by its computed bounds (the big-M of the
encoding). Affine rules give equalities ``y = sum_i M_i x_i + c`` (``M_i`` from the rule's
own ``apply`` on unit vectors, so no op is named here). A rule with ``branch_points`` is
linear between them (their contract); on ``[l, u]`` a neuron with interior points ``p_1 <
.. < p_{m-1}`` is encoded incrementally: ``x = l + sum d_i``, ``y = f(l) + sum s_i d_i``,
``0 <= d_i <= len_i``, and binaries ``z_i``: ``d_{i+1} <= len_{i+1} z_i <= ... `` (segment
``i+1`` is used only once segment ``i`` is full), exact for any continuous piecewise-linear
f. A neuron with no interior point is one linear piece (no binary). Other nonlinear rules
make the encoding inapplicable (:class:`NotApplicable`).

Uses: :func:`decide_case` as a complete, time-limited method for small networks;
:func:`solve_leaf` for branch-and-bound leaves (every neuron decided: an LP). A disjunct
``A y <= b`` is infeasible when ``min t  s.t.  A y - b <= t`` is above a small margin (or the
solver's dual bound is, after a time limit); a feasible point is only a candidate until
onnxruntime confirms it.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_backend
from ..ops import rule_of

__all__ = ["NotApplicable", "Encoding", "encode", "solve_disjunct", "solve_leaf", "decide_case", "milp_size"]

NP = get_backend("numpy")
MAX_DENSE = 20_000_000  # entries of one affine node's matrix


class NotApplicable(Exception):
    """The network has an op the exact encoding does not cover, or is too large."""


class Encoding:
    """Variables ``lb, ub, integrality`` and constraint triplets of one network encoding."""

    def __init__(self):
        self.lb, self.ub, self.kind = [], [], []
        self.rows, self.cols, self.vals, self.rlo, self.rhi = [], [], [], [], []
        self.n_rows = 0
        self.var = {}  # node name -> first variable index (values in C order)

    def add_vars(self, lb, ub, integer=False):
        lb, ub = np.ravel(lb).astype(np.float64), np.ravel(ub).astype(np.float64)
        start = len(self.lb)
        self.lb.extend(lb)
        self.ub.extend(ub)
        self.kind.extend([1 if integer else 0] * len(lb))
        return start + np.arange(len(lb))

    def add_rows(self, r, c, v, lo, hi):
        """Constraints ``lo <= sum v x[c] <= hi`` with local row ids ``r`` (0..n-1)."""
        r = np.asarray(r)
        n = int(r.max()) + 1 if r.size else 0
        self.rows.append(self.n_rows + r)
        self.cols.append(np.asarray(c))
        self.vals.append(np.asarray(v, dtype=np.float64))
        self.rlo.extend(np.broadcast_to(lo, n))
        self.rhi.extend(np.broadcast_to(hi, n))
        self.n_rows += n

    @property
    def n_binaries(self):
        return int(np.sum(self.kind))


def _affine_matrices(node, shapes):
    rule = rule_of(node)
    out = node.size
    zeros = [np.zeros((1,) + tuple(s)) for s in shapes]
    c = np.asarray(rule.apply(NP, node, *zeros, bias=True), dtype=np.float64).reshape(-1)
    mats = []
    for i, s in enumerate(shapes):
        n = int(np.prod(s))
        if n * out > MAX_DENSE:
            raise NotApplicable(f"node {node.name}: a {out} x {n} matrix is too large to encode")
        xs = [np.zeros((n,) + tuple(t)) for t in shapes]
        xs[i] = np.eye(n).reshape((n,) + tuple(s))
        mats.append(np.asarray(rule.apply(NP, node, *xs, bias=False), dtype=np.float64).reshape(n, out).T)
    return mats, c


def milp_size(graph, bounds) -> tuple:
    """``(binaries, variables)`` an encoding with ``bounds`` would have (cheap; raises
    :class:`NotApplicable` like :func:`encode`)."""
    nb, nv = 0, graph.input.size
    for node in graph.computed:
        rule = rule_of(node)
        nv += node.size
        if rule.affine:
            continue
        if not hasattr(rule, "branch_points"):
            raise NotApplicable(f"node {node.name} ({node.op}) is not piecewise linear")
        lo, hi = bounds[node.inputs[0]]
        for t in rule.branch_points(NP, node, lo):
            t = np.broadcast_to(t, lo.shape)
            nb += int(((lo < t) & (t < hi)).sum())
    return nb, nv


def encode(graph, bounds: dict, x_lo, x_hi, cache: dict | None = None, prune: bool = False) -> Encoding:
    """The exact encoding of ``graph`` on the box ``x_lo, x_hi`` (flat) with node bounds
    ``{name: (lo, hi)}`` (``(1, *shape)``; nodes without bounds are unbounded). ``cache``: a
    dict kept between calls on the same graph (the affine nodes' matrices). ``prune``: leave
    out the rows of values that only feed outputs fixed by their bounds (see
    :func:`_unused_values`; a relaxation, much smaller on nets with many inactive ReLUs;
    ``enc.pruned`` says whether any was left out)."""
    enc = Encoding()
    enc.var[graph.input.name] = enc.add_vars(x_lo, x_hi)
    unused = _unused_values(graph, bounds) if prune else {}
    enc.pruned = bool(unused)
    for node in graph.computed:
        rule = rule_of(node)
        lo, hi = bounds.get(node.name, (np.full(node.size, -np.inf), np.full(node.size, np.inf)))
        y = enc.add_vars(lo, hi)
        enc.var[node.name] = y
        if rule.affine:
            if cache is not None and node.name in cache:
                sparse, c = cache[node.name]
            else:
                mats, c = _affine_matrices(node, [graph[i].shape for i in node.inputs])
                sparse = [(np.nonzero(M), M[np.nonzero(M)]) for M in mats]
                if cache is not None:
                    cache[node.name] = sparse, c
            r, cols, v = [np.arange(node.size)], [y], [np.ones(node.size)]
            c = np.array(c, dtype=np.float64)
            for name, ((rr, cc), m) in zip(node.inputs, sparse):
                xv = enc.var[name]
                lb, ub = np.asarray(enc.lb)[xv], np.asarray(enc.ub)[xv]
                fixed = (lb == ub)[cc]  # values known exactly (e.g. inactive ReLUs): into the constant
                if fixed.any():
                    np.add.at(c, rr[fixed], m[fixed] * lb[cc[fixed]])
                    rr, cc, m = rr[~fixed], cc[~fixed], m[~fixed]
                r.append(rr)
                cols.append(xv[cc])
                v.append(-m)
            r, cols, v = np.concatenate(r), np.concatenate(cols), np.concatenate(v)
            if node.name in unused:  # rows whose value nothing reads: left out (a relaxation)
                keep = ~unused[node.name]
                new = np.cumsum(keep) - 1
                sel = keep[r]
                r, cols, v, c = new[r[sel]], cols[sel], v[sel], c[keep]
            enc.add_rows(r, cols, v, c, c)
            continue
        if not hasattr(rule, "branch_points") or len(node.inputs) != 1:
            raise NotApplicable(f"node {node.name} ({node.op}) is not piecewise linear")
        _encode_pwl(enc, node, rule, enc.var[node.inputs[0]], y, bounds[node.inputs[0]])
    return enc


def _unused_values(graph, bounds):
    """``{affine node: (size,) bool}``: values read only by elementwise piecewise-linear
    nodes whose output there is fixed by its bounds (``lo == hi``: e.g. an inactive ReLU).
    Their defining rows can be left out: that only enlarges the feasible set (the lower
    bound stays sound; a feasible point is a candidate until onnxruntime confirms it)."""
    users = {}
    for n in graph.computed:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    out = {}
    for node in graph.computed:
        us = users.get(node.name, [])
        if not rule_of(node).affine or node.name == graph.output or not us:
            continue
        drop = np.ones(node.size, dtype=bool)
        for u in us:
            if (rule_of(u).affine or not hasattr(rule_of(u), "branch_points") or len(u.inputs) != 1
                    or u.size != node.size or u.name not in bounds or u.name == graph.output):
                drop[:] = False
                break
            lo, hi = (np.ravel(v) for v in bounds[u.name])
            drop &= lo == hi
        if drop.any():
            out[node.name] = drop
    return out


def _encode_pwl(enc, node, rule, xv, yv, b):
    l, u = (np.asarray(v, dtype=np.float64).reshape((1,) + tuple(node.shape)) for v in b)
    pts = [np.broadcast_to(np.asarray(t, dtype=np.float64), l.shape) for t in rule.branch_points(NP, node, l)]
    f = lambda z: np.asarray(rule.forward(NP, node, z), dtype=np.float64).ravel()  # noqa: E731
    fl, fu = f(l), f(u)
    lf, uf = l.ravel(), u.ravel()
    inner = [(p.ravel(), f(p)) for p in pts]
    for j in range(node.size):
        cuts = sorted((float(p[j]), float(fp[j])) for p, fp in inner if lf[j] < p[j] < uf[j])
        if not cuts:  # one linear piece on [l, u]
            if uf[j] > lf[j] and fu[j] != fl[j]:
                s = (fu[j] - fl[j]) / (uf[j] - lf[j])
                enc.add_rows([0, 0], [yv[j], xv[j]], [1.0, -s], fl[j] - s * lf[j], fl[j] - s * lf[j])
            else:
                enc.add_rows([0], [yv[j]], [1.0], fl[j], fl[j])
            continue
        knots = [(lf[j], fl[j])] + cuts + [(uf[j], fu[j])]
        lens = np.array([knots[i + 1][0] - knots[i][0] for i in range(len(knots) - 1)])
        slopes = np.array([(knots[i + 1][1] - knots[i][1]) / lens[i] for i in range(len(lens))])
        d = enc.add_vars(np.zeros(len(lens)), lens)
        z = enc.add_vars(np.zeros(len(cuts)), np.ones(len(cuts)), integer=True)
        # x = l + sum d ; y = f(l) + sum s d
        enc.add_rows(np.zeros(len(d) + 1, int), np.concatenate([[xv[j]], d]), np.concatenate([[1.0], -np.ones(len(d))]),
                     lf[j], lf[j])
        enc.add_rows(np.zeros(len(d) + 1, int), np.concatenate([[yv[j]], d]), np.concatenate([[1.0], -slopes]),
                     fl[j], fl[j])
        for i in range(len(cuts)):  # d_{i+1} <= len_{i+1} z_i  and  d_i >= len_i z_i
            enc.add_rows([0, 0], [d[i + 1], z[i]], [1.0, -lens[i + 1]], -np.inf, 0.0)
            enc.add_rows([0, 0], [d[i], z[i]], [1.0, -lens[i]], 0.0, np.inf)


def solve_disjunct(enc: Encoding, out_vars, A, b, time_limit: float):
    """``min t`` s.t. ``A y - b <= t`` over the encoding (``y = x[out_vars]``). Returns
    ``(lower, value, x_in)``: a sound lower bound of the optimum (the dual bound; ``+inf``
    when infeasible), the best value found (``nan`` if none) and its input (or None)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    n = len(enc.lb)
    A = np.asarray(A, dtype=np.float64).reshape(-1, len(out_vars))
    rr, cc = np.nonzero(A)
    k = A.shape[0]
    rows = np.concatenate(enc.rows + [enc.n_rows + rr, enc.n_rows + np.arange(k)])
    cols = np.concatenate(enc.cols + [np.asarray(out_vars)[cc], np.full(k, n)])
    vals = np.concatenate(enc.vals + [A[rr, cc], -np.ones(k)])
    lo = np.concatenate([enc.rlo, np.full(k, -np.inf)])
    hi = np.concatenate([enc.rhi, np.asarray(b, dtype=np.float64).ravel()])
    M = coo_matrix((vals, (rows, cols)), shape=(enc.n_rows + k, n + 1)).tocsr()
    c = np.zeros(n + 1)
    c[n] = 1.0
    res = milp(c, integrality=np.array(enc.kind + [0]), bounds=Bounds(np.array(enc.lb + [-np.inf]),
                                                                        np.array(enc.ub + [np.inf])),
               constraints=LinearConstraint(M, lo, hi),
               options={"time_limit": max(0.05, float(time_limit)), "disp": False})
    if res.status == 2:  # infeasible
        return np.inf, np.nan, None
    dual = getattr(res, "mip_dual_bound", None)
    if res.status == 0 and res.x is not None:
        # an LP's optimum is exact; a MILP's "optimal" is within HiGHS's gap: its dual bound only
        lower = res.fun if not enc.n_binaries else (dual if dual is not None and np.isfinite(dual) else -np.inf)
        return float(min(lower, res.fun)), float(res.fun), res.x
    lower = float(dual) if dual is not None and np.isfinite(dual) else -np.inf
    if res.x is not None:
        return lower, float(res.fun), res.x
    return lower, np.nan, None


def _margin(b):
    return 1e-6 * (1.0 + float(np.abs(b).max(initial=0.0)))


def solve_leaf(s, P, bounds, rec, case, time_limit: float = 10.0, cache: dict | None = None):
    """Decide a branch-and-bound subdomain exactly: ``("proved" | "sat" | "unknown", x)``.
    ``bounds``: its node bounds ``{name: (lo, hi)}`` ``(1, *shape)``, valid on the subdomain
    and clamped by its splits (so the split constraints are the split neurons' variable
    bounds; a leaf, every neuron decided, is an LP). Each open disjunct gets up to
    ``time_limit`` seconds (and the solver's deadline); it is proved only when HiGHS reports
    it infeasible, or optimal (or stopped) with a dual bound above the margin; ``cache``:
    see :func:`encode`."""
    import time

    try:
        enc = encode(P.graph, bounds, P.lo, P.hi, cache, prune=True)
    except NotApplicable:
        return "unknown", None
    for j in np.flatnonzero(rec["open"]):
        rows = P.owner == j
        for attempt in range(2):
            left = s.deadline - time.monotonic()
            if left <= 0.05:
                return "unknown", None
            lower, value, x = solve_disjunct(enc, enc.var[P.graph.output], P.R[rows], P.b[rows],
                                             min(float(time_limit), left))
            if lower > _margin(P.b):
                break
            if x is not None and value <= _margin(P.b):
                xin = x[enc.var[P.graph.input.name]]
                if s.confirm(xin[None], case):
                    return "sat", xin
                if enc.pruned and attempt == 0:  # perhaps a point of the relaxation only: exactly
                    enc = encode(P.graph, bounds, P.lo, P.hi, cache)
                    continue
            return "unknown", None
    return "proved", None


def decide_case(s, cs, bounds, time_limit, max_binaries=400):
    """Decide the open disjuncts of case ``cs`` by MILP within ``time_limit`` seconds.
    Returns ``"proved"``, ``"sat"`` (confirmed by onnxruntime), ``"unknown"`` or
    ``"skipped: <why>"``."""
    import time

    g = s.net.graph
    t_end = time.monotonic() + time_limit
    try:
        nb, nv = milp_size(g, bounds)
        if nb > max_binaries:
            return f"skipped: {nb} binaries (> {max_binaries})"
        enc = encode(g, bounds, cs.case.x_lower, cs.case.x_upper)
    except NotApplicable as e:
        return f"skipped: {e}"
    out = enc.var[g.output]
    xin = enc.var[g.input.name]
    verdict = "proved"
    for j in np.flatnonzero(cs.open):
        rows = cs.owner == j
        left = t_end - time.monotonic()
        if left <= 0.05:
            return "unknown"
        lower, value, x = solve_disjunct(enc, out, cs.R[rows], cs.b[rows], left)
        if lower > _margin(cs.b):
            cs.open[j] = False
            continue
        if x is not None and value <= _margin(cs.b) and s.confirm(x[xin][None], cs.case):
            return "sat"
        verdict = "unknown"
    return verdict
