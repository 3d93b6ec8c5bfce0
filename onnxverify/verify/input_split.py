"""Branch and bound on the input box (input bisection) for networks with few free inputs.

Boxes are bounded many at once through the bound engine's batch axis; a cheap method scores
every candidate child and the tightest method that ran re-bounds the children that stay open.
Box centres and a few PGD steps inside the worst boxes look for counterexamples on the way.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import MemoryLimitError
from .deadline import Decided, TimeUp

__all__ = ["split_applicable", "branch_and_bound"]


def split_applicable(s):
    """Whether bisection applies to solver ``s`` (a :class:`~.cascade.Solver`): a network, a
    bound method that ran, and at most ``s.max_split_dims`` free inputs in every open case."""
    if s.net is None or not s.split or s.best_method is None:
        return False
    return all(not cs.trivial and 0 < int((cs.case.x_upper > cs.case.x_lower).sum()) <= s.max_split_dims
               for cs in s.open_cases())


def branch_and_bound(s, max_boxes=1_000_000):
    """Bisect the input boxes of the open cases until every box is proved (unsat), a box
    centre is a confirmed counterexample (sat), or time / memory runs out."""
    t = time.monotonic()
    tiers = bab_tiers(s)
    method = "+".join(m for m, _ in tiers)
    stats = {"bounded": 0, "expanded": 0, "rounds": 0, "queue": 0, "proved_volume": 0.0}
    try:
        for cs in s.open_cases():
            if not _bab_case(s, cs, tiers, max_boxes, stats):
                s.note("split", t, result="gave up", method=method, **stats)
                return
    except TimeUp:
        s.note("split", t, result="timeout", method=method, **stats)
        raise
    s.note("split", t, result="proved", method=method, **stats)
    raise Decided("unsat")


def _bound_boxes(s, cs, lo, hi, parent_open, method, strategy, state):
    """Bound boxes ``(N, n_in)`` on the rows of their open disjuncts. Returns ``(open
    (N, D), score (N,), target (N,))``: disjuncts still open, the smallest shortfall
    ``max_row (lower - b)`` over open disjuncts (``inf`` when proved) and that disjunct.
    Calls are chunked to ``state['batch']`` boxes, which adapts to the call time."""
    D = len(cs.open)
    rows = parent_open.any(axis=0)[cs.owner]
    R, b, owner = cs.R[rows], cs.b[rows], cs.owner[rows]
    out_open, out_score, out_target = [], [], []
    i = 0
    while i < len(lo):
        s.check_time()
        n = state["batch"]
        ts = time.monotonic()
        try:
            lower, tol = s.bounds(lo[i:i + n], hi[i:i + n], R, method, strategy)
        except (MemoryLimitError, MemoryError):
            if n == 1:
                raise
            state["batch"] = max(1, n // 2)
            continue
        dt = time.monotonic() - ts
        if dt < 0.1 and n < 8192 and len(lo) - i > n:
            state["batch"] = n * 2
        elif dt > 1.0 and n > 8:
            state["batch"] = n // 2
        op = parent_open[i:i + n] & ~s.proved(lower, tol, b, owner, D)
        short = np.full(op.shape, np.inf)
        diff = lower - b[None]
        for d in np.unique(owner):
            short[:, d] = diff[:, owner == d].max(axis=1)
        short[~op] = np.inf
        out_open.append(op)
        out_score.append(short.min(axis=1))
        out_target.append(np.argmin(short, axis=1))
        i += lower.shape[0]
    s.bab_stats["bounded"] += len(lo)
    return np.concatenate(out_open), np.concatenate(out_score), np.concatenate(out_target)


def bab_tiers(s):
    """Bound methods of the bisection: a cheap one scores every candidate child, the
    tightest method that ran re-bounds the children that stay open."""
    ran = [ms for ms in s.cascade if ms in s.ran_ok]
    tight = s.best_method
    cheap = next((ms for ms in ran if ms[0] == "crown-ibp"), None) \
        or next((ms for ms in ran if ms[0] == "crown-lbp"), None) or tight
    return [cheap] if cheap == tight else [cheap, tight]


def _bab_case(s, cs, tiers, max_boxes, stats, try_all_dims=8):
    from .attack import CaseObjective, GradientUnavailable, forward_flat, local_pgd, value_and_grad

    s.bab_stats = stats
    c = cs.case
    root_w = c.x_upper - c.x_lower
    free = np.flatnonzero(root_w > 0)
    exhaustive = len(free) <= try_all_dims
    objective = CaseObjective(c.y_disjuncts, s.n_out)
    tol_m = 1e-6 * (1.0 + float(np.abs(cs.b).max(initial=0.0)))
    state = {"batch": 8}
    proved_vol = stats["proved_volume"]
    lo_q, hi_q = c.x_lower[None].copy(), c.x_upper[None].copy()
    method, strategy = tiers[0]
    open_q, score, target = _bound_boxes(s, cs, lo_q, hi_q, cs.open[None], *tiers[-1], state)
    keep = ~np.isinf(score)
    lo_q, hi_q, open_q, target_q, score_q = lo_q[keep], hi_q[keep], open_q[keep], target[keep], score[keep]
    depth_q = np.zeros(len(lo_q), dtype=np.int64)
    while len(lo_q):
        s.check_time()
        if len(lo_q) > max_boxes:
            return False
        stats["queue"] = len(lo_q)
        n = max(1, min(len(lo_q), state["batch"] // (2 * len(free) if exhaustive else 2)))
        # best first: the boxes furthest from a proof (most likely to hold a counterexample)
        if n < len(lo_q):
            idx = np.argpartition(score_q, n - 1)[:n]
            rest = np.ones(len(lo_q), dtype=bool)
            rest[idx] = False
        else:
            idx, rest = np.arange(len(lo_q)), np.zeros(len(lo_q), dtype=bool)
        idx = idx[np.argsort(score_q[idx])]
        lo, hi, op, tg, dp = lo_q[idx], hi_q[idx], open_q[idx], target_q[idx], depth_q[idx]
        lo_q, hi_q, open_q, target_q, depth_q, score_q = (lo_q[rest], hi_q[rest], open_q[rest], target_q[rest],
                                                         depth_q[rest], score_q[rest])
        stats["expanded"] += n
        stats["rounds"] = stats.get("rounds", 0) + 1
        centre = (lo + hi) / 2
        width = hi - lo
        g = None
        if not exhaustive and s.gradient_ok:
            try:
                y, g = value_and_grad(s.net.graph, centre, lambda yy: objective.loss_grad(yy, tg)[1])
            except GradientUnavailable:
                s.gradient_ok = False
        if g is None:
            y = forward_flat(s.net.graph, centre)
        m = objective.margins(y).min(axis=1)
        bad = m <= tol_m
        if bad.any() and s.confirm(centre[bad][np.argsort(m[bad])], c):
            raise Decided("sat")
        if s.gradient_ok:  # a few PGD steps inside the worst boxes
            k_att = min(n, 64)
            try:
                if local_pgd(s.net.graph, lo[:k_att], hi[:k_att], objective, tg[:k_att], 5, s.confirm, c):
                    raise Decided("sat")
            except GradientUnavailable:
                s.gradient_ok = False
        # candidate split dimensions per box: (n, k)
        if exhaustive:
            cand = np.broadcast_to(free, (n, len(free)))
        else:
            rel = np.full(width.shape, -1.0)
            rel[:, free] = width[:, free] / root_w[free]
            smear = np.full(width.shape, -1.0)
            if g is not None:
                smear[:, free] = np.abs(g[:, free]) * width[:, free]
            use_rel = (dp % 2 == 1) | (smear.max(axis=1) <= 0)
            cand = np.where(use_rel, np.argmax(rel, axis=1), np.argmax(smear, axis=1))[:, None]
        k = cand.shape[1]
        rows_ = np.repeat(np.arange(n), k)
        dims = cand.reshape(-1)
        mid = (lo[rows_, dims] + hi[rows_, dims]) / 2
        lo_a, hi_a = lo[rows_].copy(), hi[rows_].copy()
        hi_a[np.arange(n * k), dims] = mid
        lo_b, hi_b = lo[rows_].copy(), hi[rows_].copy()
        lo_b[np.arange(n * k), dims] = mid
        ch_lo, ch_hi = np.concatenate([lo_a, lo_b]), np.concatenate([hi_a, hi_b])
        ch_open_parent = np.concatenate([op[rows_], op[rows_]])
        ch_open, ch_score, ch_target = _bound_boxes(s, cs, ch_lo, ch_hi, ch_open_parent, method, strategy, state)
        # best dimension per box: the larger worst-child score
        both = np.minimum(ch_score[: n * k], ch_score[n * k:]).reshape(n, k)
        best = np.argmax(both, axis=1)
        pick = np.arange(n) * k + best
        sel = np.concatenate([pick, pick + n * k])
        ch_lo, ch_hi, ch_open, ch_score, ch_target = ch_lo[sel], ch_hi[sel], ch_open[sel], ch_score[sel], ch_target[sel]
        for m2, s2 in tiers[1:]:  # tighter bounds for the children that stay open
            todo = np.flatnonzero(~np.isinf(ch_score))
            if len(todo):
                st2 = state.setdefault(m2, {"batch": 8})
                o2, s2_, t2 = _bound_boxes(s, cs, ch_lo[todo], ch_hi[todo], ch_open[todo], m2, s2, st2)
                ch_open[todo], ch_score[todo], ch_target[todo] = o2, s2_, t2
        done = np.isinf(ch_score)
        vol = np.prod((ch_hi[:, free] - ch_lo[:, free]) / root_w[free], axis=1)
        proved_vol += float(vol[done].sum()) / len(s.cases)
        stats["proved_volume"] = round(proved_vol, 6)
        keep = ~done
        lo_q = np.concatenate([lo_q, ch_lo[keep]])
        hi_q = np.concatenate([hi_q, ch_hi[keep]])
        open_q = np.concatenate([open_q, ch_open[keep]])
        target_q = np.concatenate([target_q, ch_target[keep]])
        depth_q = np.concatenate([depth_q, np.concatenate([dp, dp])[keep] + 1])
        score_q = np.concatenate([score_q, ch_score[keep]])
    cs.open[:] = False
    return True
