"""Branch and bound on the input box (input splitting) for networks with few free inputs.

Each open case keeps a queue of boxes with their open disjuncts, their worst margin (the
smallest ``max_row (lower - b)`` over open disjuncts), the split dimensions their last bound
suggests, and their intermediate bounds (which hold on every sub-box). A round takes the
worst boxes (as many as the memory and a target round time allow), bisects each along its
``k`` best-ranked dimensions, bounds every child in one batched call
(:class:`~.box_bounds.BoxBounder`, parents' intermediate bounds intersected in), keeps per
parent the dimension whose worse child is best (``k = 1``: the ranking alone), and queues
the children not yet proved. Dimensions are ranked by sensitivity ``|A| * width``, ``A``
the input coefficients of the linear lower bound of the row a proof is closest to.

Counterexamples: the centre of each child and the corner minimising its linear bound are
evaluated, and a few PGD steps run inside the worst children; a point goes to onnxruntime
(``s.confirm``) only, so ``sat`` is never decided from bounds. ``unsat`` only when every
box of every case is proved.

Per network, the bound method and precision are chosen by a race (:func:`_race`): when
the cascade's tightest method in float64 has not decided the case within a short slice,
the cheaper linear method that ran (``crown-lbp``) and then float32 get the same slice each
from the root box, and the search that proved the most volume goes on (its queue is kept;
the others are dropped). All candidates give sound bounds: only the speed differs (on
reach_prob_density's robot net crown-lbp is 2-3x faster per box and as tight as CROWN at
these box sizes; on ACAS Xu it is too loose). With at most :data:`ALL_DIMS` free inputs
every free dimension is a trial split (``k`` = their number): on the robot net this
needed 4x fewer expansions than ``k = 3``.

The search can stop at a soft time (``stop_at``) and resume later from its queue (the
cascade gives neuron branch and bound a turn in between, :func:`split_policy`).
"""
from __future__ import annotations

import time

import numpy as np

from .box_bounds import BoxBounder, disjunct_dual, joint_proofs
from .deadline import Decided, TimeUp

__all__ = ["split_applicable", "branch_and_bound", "SplitState", "split_policy"]

LARGE_INPUT = 1024
#: up to this many free inputs, every free dimension is a trial split
ALL_DIMS = 6
#: linear methods the race may try instead of the cascade's tightest (when they ran)
CHEAPER = ("crown-lbp",)


def split_applicable(s):
    """Whether bisection applies to solver ``s`` (a :class:`~.cascade.Solver`): a network, a
    bound method that ran, and at most ``s.max_split_dims`` free inputs in every open case."""
    if s.net is None or not s.split or s.best_method is None:
        return False
    return all(not cs.trivial and 0 < n_free(cs) <= s.max_split_dims for cs in s.open_cases())


def n_free(cs) -> int:
    return int((cs.case.x_upper > cs.case.x_lower).sum())


def split_policy(s):
    """When input splitting pauses to give neuron branch and bound (the complete steps) a
    turn: ``(seconds from now to the first check, hand_off(state) -> bool)``, or None to
    split until the deadline. None when the complete steps are off or the network has no
    neuron to split on. At the check, splitting goes on while it is on course: more than
    half the volume proved and at most 6 free inputs (where input splitting is the method
    that pays), or a proved-volume rate that would finish within the time left; otherwise
    the complete steps take their turn and splitting resumes after them."""
    from ..ops import rule_of

    if not getattr(s, "complete", False) or not any(rule_of(n).splittable for n in s.net.graph.computed):
        return None
    dims = max(n_free(cs) for cs in s.open_cases())

    def hand_off(state):
        p = state.stats.get("proved_volume", 0.0)
        rate = p / max(state.time, 1e-9)
        if dims <= 6 and p >= 0.5:
            return False
        return rate * s.remaining() < 2.0 * (1.0 - p)

    return (0.4 if dims <= 6 else 0.25) * s.remaining(), hand_off


class _Queue:
    """Boxes of one case: ``lo, hi (N, n)``, ``open (N, J)``, ``marg (N, J)`` lower bounds of
    each disjunct's margin, ``score (N,)`` (the worst open one), ``cand (N, k)`` split
    dimensions, ``bounds {node: (lo, hi) (N, size)}``."""

    def __init__(self, lo, hi, open_, marg, score, cand, bounds):
        self.lo, self.hi, self.open, self.marg, self.score, self.cand, self.bounds = \
            lo, hi, open_, marg, score, cand, bounds

    def __len__(self):
        return len(self.score)

    def take(self, idx):
        """Remove and return the boxes ``idx`` as a new queue."""
        keep = np.ones(len(self), dtype=bool)
        keep[idx] = False
        out = self.select(idx)
        rest = self.select(keep)
        self.__dict__.update(rest.__dict__)
        return out

    def select(self, idx):
        return _Queue(self.lo[idx], self.hi[idx], self.open[idx], self.marg[idx], self.score[idx], self.cand[idx],
                      {n: (a[idx], b[idx]) for n, (a, b) in self.bounds.items()})

    def extend(self, other):
        if len(other) == 0:
            return
        cat = np.concatenate
        self.lo, self.hi = cat([self.lo, other.lo]), cat([self.hi, other.hi])
        self.open, self.score, self.cand = cat([self.open, other.open]), cat([self.score, other.score]), \
            cat([self.cand, other.cand])
        self.marg = cat([self.marg, other.marg])
        self.bounds = {n: (cat([a, other.bounds[n][0]]), cat([b, other.bounds[n][1]]))
                       for n, (a, b) in self.bounds.items()}


class _CaseSearch:
    """Input splitting on one case of solver ``s``."""

    def __init__(self, s, cs, k_trial, max_children=None, config=None):
        from .attack import CaseObjective

        self.s, self.cs = s, cs
        c = cs.case
        self.root_w = c.x_upper - c.x_lower
        self.free = np.flatnonzero(self.root_w > 0)
        if k_trial is None:
            k_trial = len(self.free) if len(self.free) <= ALL_DIMS else 3
        self.k = max(1, min(k_trial, len(self.free)))
        self.D = len(cs.open)
        method, strategy, dtype = config or default_config(s)
        self.config = (method, strategy, dtype)
        self.tol = 1e-4 if dtype == np.float32 else 1e-9
        self.bounder = BoxBounder(s.net.graph, cs.R, method, strategy or "adaptive", dtype, s.max_memory)
        self.objective = CaseObjective(c.y_disjuncts, s.n_out)
        self.tol_m = 1e-6 * (1.0 + float(np.abs(cs.b).max(initial=0.0)))
        mem = s.max_memory or _default_memory()
        self.max_children = max(2, int(0.25 * mem // max(self.bounder.bytes_per_box(), 1)))
        if max_children is not None:
            self.max_children = max(2, int(max_children))
        self.max_queue = max(64, int(0.2 * mem // max(self.bounder.stored_bytes_per_box(), 1)))
        self.children = min(64, self.max_children)  # boxes per bound call; adapts to the round time
        self.queue = None
        self.proved_volume = 0.0

    # ---- bounding -----------------------------------------------------------------------
    def bound(self, lo, hi, open_, parent, parent_marg=None):
        """Bound boxes on the rows of disjuncts open in any of them; ``parent`` /
        ``parent_marg``: intermediate bounds and disjunct margins valid on each box (a
        child's margin is never below its parent's). Returns ``(open (N, D), marg (N, D),
        score (N,), cand (N, k), xmin (N, n) or None, bounds)``."""
        cs, s = self.cs, self.s
        rows = np.flatnonzero(open_.any(axis=0)[cs.owner])
        lower, lines, bounds = self.bounder(lo, hi, rows, parent)
        s.bab_stats["bounded"] += len(lo)
        b, owner = cs.b[rows], cs.owner[rows]
        op = open_ & ~s.proved(lower, self.tol, b, owner, self.D)
        diff = lower - b[None]
        per = np.full(op.shape, -np.inf)
        for d in np.unique(owner):
            per[:, d] = diff[:, owner == d].max(axis=1)
        width = hi - lo
        xmin = None
        sens = np.zeros_like(width)
        if lines is not None:
            # the rows of each disjunct jointly (one linear bound per row, combined)
            G, coef, scale, lam = disjunct_dual(lines[0], lines[1], b, owner, self.D, lo, hi)
            op &= ~(G > self.tol * scale)
            # one more pass: each several-row disjunct's rows combined (proofs only: fed the
            # combined margins, the split choice chased them and needed 3-5x more boxes)
            op &= ~joint_proofs(self.bounder, op, lam, cs.R[rows], b, owner, self.tol)
            per = np.maximum(per, G)
            per[~op] = np.inf
            worst = np.argmin(per, axis=1)
            a = coef[np.arange(len(lo)), worst]  # (N, n): the worst disjunct's combined bound
            sens = np.abs(a) * width
            xmin = np.where(a > 0, lo, hi)
        if parent_marg is not None:
            per = np.maximum(per, parent_marg)
        marg = per.copy()
        per[~op] = np.inf
        score = per.min(axis=1)
        rel = width / np.where(self.root_w > 0, self.root_w, 1.0)
        # ties (and boxes whose bound ignores the input) go to the widest relative dimension
        sens = sens + 1e-9 * rel * (1 + sens.max(axis=1, keepdims=True))
        sens[:, self.root_w <= 0] = -1.0
        order = np.argsort(-sens, axis=1)
        cand = order[:, :self.k].copy()
        if self.k > 1:  # the last candidate: the widest dimension (relative to the root box) not yet in
            rel[:, self.root_w <= 0] = -1.0
            rel2 = rel.copy()
            np.put_along_axis(rel2, order[:, :self.k - 1], -2.0, axis=1)
            cand[:, -1] = np.argmax(rel2, axis=1)
        return op, marg, score, cand, xmin, bounds

    # ---- counterexamples ----------------------------------------------------------------
    def attack(self, lo, hi, xmin, score, tg_open):
        from .attack import GradientUnavailable, forward_flat, local_pgd

        s, c = self.s, self.cs.case
        pts = (lo + hi) / 2 if xmin is None else np.concatenate([(lo + hi) / 2, xmin])
        m = self.objective.margins(forward_flat(s.net.graph, pts)).min(axis=1)
        bad = m <= self.tol_m
        if bad.any() and s.confirm(pts[bad][np.argsort(m[bad])], c):
            raise Decided("sat")
        if s.gradient_ok and len(lo):
            k = min(len(lo), 16)
            idx = np.argsort(score)[:k]
            try:
                if local_pgd(s.net.graph, lo[idx], hi[idx], self.objective, np.full(k, -1), 4, s.confirm, c):
                    raise Decided("sat")
            except GradientUnavailable:
                s.gradient_ok = False

    # ---- the search ---------------------------------------------------------------------
    def start(self):
        c = self.cs.case
        lo, hi = c.x_lower[None].astype(np.float64), c.x_upper[None].astype(np.float64)
        op, marg, score, cand, xmin, bounds = self.bound(lo, hi, self.cs.open[None], None)
        self.attack(lo, hi, xmin, score, op)
        self.queue = _Queue(lo, hi, op, marg, score, cand, bounds).select(~np.isinf(score))

    def pick(self, q, n):
        """``n`` boxes: half the worst by margin (where counterexamples are likeliest), half
        the largest (a proof needs every box: the volume must go down too)."""
        if n >= len(q):
            return np.arange(len(q))
        n_worst = max(1, n // 2)
        worst = np.argpartition(q.score, n_worst - 1)[:n_worst]
        rest = np.ones(len(q), dtype=bool)
        rest[worst] = False
        others = np.flatnonzero(rest)
        f = self.free
        logv = np.log(np.maximum((q.hi[others][:, f] - q.lo[others][:, f]) / self.root_w[f], 1e-300)).sum(axis=1)
        big = others[np.argpartition(-logv, n - n_worst - 1)[:n - n_worst]]
        return np.concatenate([worst, big])

    def step(self):
        """One round: split the worst boxes and bound their children."""
        s, q, k = self.s, self.queue, self.k
        t = time.monotonic()
        q.open &= self.cs.open[None]
        if not q.open.all():
            self.queue = q = q.select(q.open.any(axis=1))
            if len(q) == 0:
                return
        n = max(1, min(len(q), self.children // (2 * k)))
        idx = self.pick(q, n)
        par = q.take(idx)
        # children: for each parent and candidate, the lower and the upper half
        rep = np.repeat(np.arange(n), k)
        dims = par.cand.reshape(-1)
        mid = (par.lo[rep, dims] + par.hi[rep, dims]) / 2
        lo_a, hi_a = par.lo[rep].copy(), par.hi[rep].copy()
        hi_a[np.arange(n * k), dims] = mid
        lo_b, hi_b = par.lo[rep].copy(), par.hi[rep].copy()
        lo_b[np.arange(n * k), dims] = mid
        ch_lo, ch_hi = np.concatenate([lo_a, lo_b]), np.concatenate([hi_a, hi_b])
        both = np.concatenate([rep, rep])
        parent = {nm: (a[both], b[both]) for nm, (a, b) in par.bounds.items()}
        op, marg, score, cand, xmin, bounds = self.bound(ch_lo, ch_hi, par.open[both], parent, par.marg[both])
        if k > 1:  # per parent, the dimension whose worse child is best, then whose better one is
            capped = np.where(np.isinf(score), 0.0, score)  # a proved child: margin 0 (unproved: <= 0)
            a, b = capped[:n * k], capped[n * k:]
            value = (np.minimum(a, b) + 0.25 * np.maximum(a, b)).reshape(n, k)
            # ties (children no better than the parent) go to the widest candidate, relative to
            # the root box; a candidate far narrower than the box's widest side never wins
            rel = ((par.hi - par.lo) / np.where(self.root_w > 0, self.root_w, 1.0))
            rel_c = np.take_along_axis(rel, par.cand, axis=1)
            value = value + 1e-9 * (1 + np.abs(value)) * rel_c / np.maximum(rel.max(axis=1, keepdims=True), 1e-300)
            value[rel_c < 1e-3 * rel.max(axis=1, keepdims=True)] = -np.inf
            best = np.argmax(value, axis=1)
            best[np.isneginf(value.max(axis=1))] = 0
            pick = np.arange(n) * k + best
            sel = np.concatenate([pick, pick + n * k])
            ch_lo, ch_hi, op, score, cand = ch_lo[sel], ch_hi[sel], op[sel], score[sel], cand[sel]
            marg = marg[sel]
            xmin = None if xmin is None else xmin[sel]
            bounds = {nm: (a[sel], b[sel]) for nm, (a, b) in bounds.items()}
        self.attack(ch_lo, ch_hi, xmin, score, op)
        done = np.isinf(score)
        f = self.free
        vol = np.prod((ch_hi[:, f] - ch_lo[:, f]) / self.root_w[f], axis=1)
        self.proved_volume += float(vol[done].sum())
        q.extend(_Queue(ch_lo, ch_hi, op, marg, score, cand, bounds).select(~done))
        st = s.bab_stats
        st["expanded"] += n
        st["rounds"] += 1
        st["queue"] = len(q)
        dt = time.monotonic() - t
        if dt < 0.4 and self.children < self.max_children:
            self.children = min(self.max_children, 2 * self.children)
        elif dt > 2.0 and self.children > 8:
            self.children //= 2


def default_config(s):
    """``(method, strategy, dtype)``: the cascade's tightest method; float64 below
    :data:`LARGE_INPUT` inputs, else float32."""
    method, strategy = s.best_method
    return method, strategy, (np.float32 if s.prop.n_inputs > LARGE_INPUT else np.float64)


def race_candidates(s):
    """The configurations the race tries after :func:`default_config`, in order: each
    :data:`CHEAPER` method that ran in the cascade at the default precision, then (below
    :data:`LARGE_INPUT` inputs) float32 with whichever won. Returns ``(methods, try_f32)``."""
    method, strategy, dtype = default_config(s)
    methods = [(m, st) for m, st in s.ran_ok if m in CHEAPER and m != method]
    return methods[:1], dtype == np.float64


def _run_slice(s, srch, seconds):
    """Start ``srch`` and step it for ``seconds``; True when its queue emptied (proved)."""
    end = time.monotonic() + seconds
    srch.start()
    while len(srch.queue) and srch.cs.open.any() and time.monotonic() < end and len(srch.queue) <= srch.max_queue:
        s.check_time()
        srch.step()
    return len(srch.queue) == 0


def _race(s, cs, k_trial, max_children, stop_at, trial):
    """The search for case ``cs`` with the configuration that proved the most volume in
    equal slices (``trial`` gets one dict per candidate). The default goes first and keeps
    its lead on ties; a search that proves the case wins at once."""
    slice_s = float(np.clip(0.04 * s.remaining(), 0.5, 3.0))
    methods, try_f32 = race_candidates(s)
    n = 1 + len(methods) + int(try_f32)
    if n == 1 or (stop_at is not None and stop_at - time.monotonic() < (n + 1) * slice_s):
        srch = _CaseSearch(s, cs, k_trial, max_children)  # nothing to race, or no time before the pause
        srch.start()
        return srch
    best = None

    def run(config):
        nonlocal best
        srch = _CaseSearch(s, cs, k_trial, max_children, config)
        t = time.monotonic()
        done = _run_slice(s, srch, slice_s)
        trial.append({"method": "+".join(x for x in config[:2] if x), "dtype": np.dtype(config[2]).name,
                      "proved_volume": round(srch.proved_volume, 6), "time": round(time.monotonic() - t, 3),
                      "queue": len(srch.queue)})
        if best is None or done or srch.proved_volume > best.proved_volume:
            best = srch
        return done

    if run(default_config(s)):
        return best
    for m, st in methods:
        if run((m, st, best.config[2])):
            return best
    if try_f32:
        run(best.config[:2] + (np.float32,))
    return best


class SplitState:
    """The searches of every case, kept between turns; ``trial``: the race's candidates."""

    def __init__(self):
        self.searches = {}
        self.trial = []
        self.stats = {"bounded": 0, "expanded": 0, "rounds": 0, "queue": 0, "proved_volume": 0.0, "turns": 0}
        self.time = 0.0
        self.paused = False


def _default_memory():
    from ..bounds.passes import default_max_memory

    return default_max_memory()


def branch_and_bound(s, stop_at=None, state=None, k_trial=None, max_children=None, config=None, race=True):
    """Split the input boxes of the open cases until every box is proved (``unsat``), a
    candidate is confirmed (``sat``), the soft stop ``stop_at`` (``time.monotonic()``), or
    the deadline (``TimeUp``) or queue limit. Returns the :class:`SplitState` to resume
    from when it stops without a verdict (None when the queue limit was hit).

    ``k_trial``: trial splits per box (None: every free dimension up to :data:`ALL_DIMS`,
    else 3); ``config``: ``(method, strategy, dtype)`` for every case (None: the first case
    searched races the candidates, :func:`_race`, when ``race``; later cases use its
    winner)."""
    t = time.monotonic()
    state = state or SplitState()
    state.paused = False
    state.stats["turns"] += 1
    stats = s.bab_stats = state.stats

    def note(result):
        vols = [x.proved_volume for x in state.searches.values()]
        stats["proved_volume"] = round(float(np.mean(vols)) if vols else 0.0, 6)
        dt = time.monotonic() - t
        state.time += dt
        cfg = next(iter(state.searches.values())).config if state.searches else config or default_config(s)
        extra = {"trial": state.trial} if state.trial and stats["turns"] == 1 else {}
        k = next(iter(state.searches.values())).k if state.searches else k_trial
        s.note("split", t, result=result, method="+".join(x for x in cfg[:2] if x), dtype=np.dtype(cfg[2]).name,
               k_trial=k, boxes_per_s=round(stats["bounded"] / max(state.time, 1e-9), 1), **stats, **extra)

    try:
        for i, cs in enumerate(s.cases):
            if cs.done or cs.trivial:
                continue
            srch = state.searches.get(i)
            if srch is None:
                chosen = config or (next(iter(state.searches.values())).config if state.searches else None)
                if chosen is None and race:
                    srch = _race(s, cs, k_trial, max_children, stop_at, state.trial)
                else:
                    srch = _CaseSearch(s, cs, k_trial, max_children, chosen)
                    srch.start()
                state.searches[i] = srch
            while len(srch.queue) and cs.open.any():
                s.check_time()
                if stop_at is not None and time.monotonic() >= stop_at:
                    note("paused")
                    state.paused = True
                    return state
                if len(srch.queue) > srch.max_queue:
                    note("gave up")
                    return None
                srch.step()
            cs.open[:] = False
    except TimeUp:
        note("timeout")
        raise
    note("proved")
    raise Decided("unsat")
