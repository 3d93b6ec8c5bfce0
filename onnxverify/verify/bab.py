"""Branch and bound on neuron splits (beta-CROWN) for one input case of a property.

Subdomains wait in a priority queue, worst first (the smallest worst-disjunct margin): each
round pops a batch, splits each subdomain on the neuron chosen when it was bounded (two
children: ``h >= t`` and ``h <= t``; while few subdomains are open, on its ``d`` best
neurons at once, ``2^d`` children, so that the batch fills), bounds every child at once with
optimised lines and split multipliers (:func:`~.beta.bound_domains`: Adam steps in float32
warm-started from the parent, the bounds from a last pass in the problem's dtype, never below
the parent's: they hold on the child's subdomain too), drops the
children whose every open disjunct is proved, tries the minimisers of the children's linear
bounds as counterexamples (onnxruntime confirms), decides the next split of each remaining
child (:mod:`.branching`) and queues it. Sigmoid / Tanh neurons are split too (at 0 or the
middle of their interval: narrower intervals, tighter lines; never exact, so only the
proofs, not the splits, end such a search). A child with nothing left to split is linear on
its subdomain: an LP decides it exactly (:func:`~.milp.solve_leaf`). The stall rule: a
child whose worst margin has not improved over ``stall_k`` splits in a row (or that has
``milp_depth`` splits) gets the exact MILP of its subdomain (its clamped bounds as big-M,
``milp_s`` seconds per open disjunct, at most ``milp_share`` of the search's time): proved
only when HiGHS's dual bound (or infeasibility) proves it; otherwise it is branched on as
before and retried after twice as many stalled splits. Where every candidate's estimate is
~0 (``flat_beta``, off by default) the candidates are rescored with the split multipliers
raised, i.e. by the split constraints' own bounds. The case is proved
(``True``) only when the queue runs empty; time, the domain limit or an undecided leaf end
the search without a verdict.
"""
from __future__ import annotations

import heapq
import itertools
import time

import numpy as np

from .beta import BabProblem, DomainBatch, bound_domains
from .branching import FLAT, FirstLayerTrials, top_candidates
from .deadline import Decided

__all__ = ["BabSettings", "neuron_bab", "bab_by_disjunct", "flat_alpha"]


class BabSettings:
    """Knobs of the search (defaults tuned on the shared benchmarks, 2 CPU cores)."""

    iters = 8  # Adam steps per batch of children
    lr_alpha = 0.1
    lr_beta = 0.05
    fsb_k = 3  # candidates tried per subdomain (1: the estimate alone)
    max_depth = 6  # neurons split at once when few subdomains are open (2^d children)
    batch = 64  # first batch of parents; adapts to the round time
    round_s = (0.5, 3.0)  # aim for rounds of this many seconds
    memory_fraction = 0.3  # of max_memory for the queue
    fast_dtype = np.float32  # of the Adam steps (the bounds themselves are in the problem's dtype)
    propagate = False  # no interval pass per subdomain: the root's bounds clamped by its splits
    refresh = False  # CROWN passes re-bound the split nodes after each subdomain's first split (sound
    # passes only). Off: measured on mnist_fc/oval21 (3 each, 60 s) it decided the same 2 of 6 at 0.4x
    # (mnist_fc) and 0.3-0.4x (oval21) the subdomains/s; per subdomain it is tighter (256x6 prop_7: worst
    # margin -0.056 after 5k subdomains vs -0.061 after 33k)
    flat_beta = 0.0  # scores ~0 everywhere: rescore with the split multipliers raised by this (0: off; measured
    # slower on mnist_fc 256x6 prop_7, where the width tie-breaker and the stall MILP do better)
    stall_k = 4  # a subdomain whose worst margin has not improved over this many splits goes to the MILP (0: off)
    milp_s = 1.0  # HiGHS time limit per disjunct of such a subdomain
    milp_share = 0.25  # of the search's time, at most, in those MILPs
    milp_binaries = 400  # subdomains with more binaries than this skip the MILP
    milp_depth = 0  # and one with this many splits goes to it too (0: off; retried at twice the depth)


def _one_domain(bounds, i):
    """Subdomain ``i``'s node bounds ``{name: (lo, hi)}``, each ``(1, *shape)``."""
    return {n: (lo[i:i + 1], hi[i:i + 1]) for n, (lo, hi) in bounds.items()}


def flat_alpha(P: BabProblem, alphas: dict, K: int) -> np.ndarray:
    """``{node: tuple of (1, K, *shape)}`` (alpha-CROWN's output-pass parameters, rows of the
    lower bound) -> ``(1, K, A)`` in :attr:`BabProblem.layout` order (the neurons with a
    parameter); missing nodes get 0."""
    out = np.zeros((1, K, P.n_alpha), dtype=np.float32)
    for name, c, shape, off, free in P.layout:
        if name in alphas:
            out[:, :, off:off + len(free)] = np.asarray(alphas[name][c])[:, :K].reshape(1, K, -1)[:, :, free]
    return out


def _batch(recs, P, K):
    d = max(len(r["node"]) for r in recs)
    B = len(recs)
    node = np.full((B, d), -1, dtype=np.int64)
    idx = np.zeros((B, d), dtype=np.int64)
    side = np.zeros((B, d), dtype=np.int64)
    t = np.zeros((B, d))
    beta = np.zeros((B, d, K), dtype=np.float32)
    for i, r in enumerate(recs):
        n = len(r["node"])
        node[i, :n], idx[i, :n], side[i, :n], t[i, :n], beta[i, :n] = r["node"], r["idx"], r["side"], r["t"], r["beta"]
    alpha = np.stack([r["alpha"] for r in recs]).astype(np.float32)
    return DomainBatch((node, idx, side, t), beta, alpha, np.stack([r["open"] for r in recs]))


def _children(parents, K, depth=1):
    """The ``2^d`` children of each parent split on its first ``d = min(depth, its
    candidates)`` candidate neurons ``r["split"]`` (every sign combination)."""
    kids = []
    for r in parents:
        cand = r["split"][:max(1, depth)]
        k, j, t = (np.array([c[i] for c in cand]) for i in range(3))
        d = len(cand)
        for signs in itertools.product((1, -1), repeat=d):
            kids.append({"node": np.append(r["node"], k), "idx": np.append(r["idx"], j),
                         "side": np.append(r["side"], signs), "t": np.append(r["t"], t),
                         "beta": np.concatenate([r["beta"], np.zeros((d, K), np.float32)]),
                         "alpha": r["alpha"], "open": r["open"], "m": r.get("m", -np.inf), "lower": r["lower"],
                         "stall": r.get("stall", 0), "milp_next": r.get("milp_next", 0),
                         "milp_dnext": r.get("milp_dnext", 0)})
    return kids


def _records(doms, res, P, open_now):
    node, idx, side, t = doms.splits
    out = []
    for i in range(len(doms)):
        keep = node[i] >= 0
        out.append({"node": node[i][keep], "idx": idx[i][keep], "side": side[i][keep], "t": t[i][keep],
                    "beta": res["beta"][i][keep], "alpha": res["alpha"][i].astype(np.float16), "open": open_now[i],
                    "lower": res["lower"][i]})
    return out


def _worst_margin(P, lower, open_):
    m = P.disjunct_margins(lower)
    return np.where(open_, m, np.inf).min(axis=1)


class _Search:
    def __init__(self, s, cs, P, root_alpha, bk, settings, stats):
        self.s, self.cs, self.P, self.bk, self.cfg, self.stats = s, cs, P, bk, settings, stats
        self.K = len(P.b)
        self.root_alpha = root_alpha
        self.heap, self.tick = [], itertools.count()
        per_dom = self.K * sum(P.graph[a].size for a in P.graph.ancestors(P.graph.output)) * 8 * 12
        mem = s.max_memory or _default_memory()
        self.max_batch = max(2, int(0.4 * mem // max(per_dom, 1)))
        rec_bytes = self.K * P.n_alpha * 2 + 64 * self.K * 4 + 2048
        self.max_domains = max(16, int(settings.memory_fraction * mem // rec_bytes))
        self.batch = min(settings.batch, self.max_batch)
        self.milp_cache, self.milp_off, self.milp_spent = {}, False, 0.0
        first = FirstLayerTrials(P) if settings.fsb_k > 1 else None
        self.first = first if first is not None and first.maps else None  # FSB trials without a pass
        self.t0 = time.monotonic()

    def bound(self, doms, iters, scores, sound=True):
        ts = time.monotonic()
        out = []
        step = max(1, self.max_batch)
        rows = np.flatnonzero((doms.open[:, :, None] & self.P.disj_mask[None]).any(axis=(0, 1)))
        for i in range(0, len(doms), step):
            sub = DomainBatch(tuple(a[i:i + step] for a in doms.splits), doms.beta[i:i + step],
                              None if doms.alpha is None else doms.alpha[i:i + step], doms.open[i:i + step])
            self.s.check_time()
            out.append(bound_domains(self.bk, self.P, sub, self.root_alpha, iters, self.cfg.lr_alpha,
                                     self.cfg.lr_beta, scores, deadline=self.s.deadline, rows=rows,
                                     fast_dtype=self.cfg.fast_dtype, sound=sound, propagate=self.cfg.propagate,
                                     refresh=self.cfg.refresh and sound,
                                     capture=self.first.capture_names() if scores and self.first else None))
        self.stats["bound_s"] += time.monotonic() - ts
        if len(out) == 1:
            return out[0]
        res = {k: np.concatenate([o[k] for o in out]) for k in ("lower", "alpha", "beta", "empty")}
        res["x"] = np.concatenate([o["x"] for o in out]) if all(o["x"] is not None for o in out) else None
        res["bounds"] = {n: tuple(np.concatenate([o["bounds"][n][c] for o in out]) for c in (0, 1))
                         for n in out[0]["bounds"]}
        if scores:
            res["scores"] = {n: tuple(np.concatenate([o["scores"][n][c] for o in out]) for c in (0, 1))
                             for n in out[0]["scores"]}
            res["lines"] = {n: tuple(np.concatenate([np.broadcast_to(o["lines"][n][c], o["scores"][n][0].shape)
                                                     for o in out]) for c in range(4)) for n in out[0]["lines"]}
        if "capture" in out[0]:
            res["capture"] = {k: (v if k == "rows" or v is None else np.concatenate([o["capture"][k] for o in out]))
                              for k, v in out[0]["capture"].items()}
        return res

    def decide(self, doms, res):
        """The split candidates ``[(node, idx, t), ...]`` of each subdomain (the best first,
        up to ``max_depth`` distinct neurons), or None when nothing is left to split."""
        ts = time.monotonic()
        kmax = max(self.cfg.fsb_k, self.cfg.max_depth)
        node, idx, t, valid, score = top_candidates(self.P, res, kmax, with_scores=True)
        B = len(doms)
        flat = self._flat(doms, score, valid)
        if flat.any() and node.shape[1]:
            # the output bound sees no candidate: rank by the split constraints' own bounds
            f = np.flatnonzero(flat)
            beta = res["beta"][f] + (doms.splits[0][f] >= 0)[:, :, None] * self.cfg.flat_beta
            sub = DomainBatch(tuple(a[f] for a in doms.splits), beta.astype(np.float32), res["alpha"][f],
                              doms.open[f])
            r2 = self.bound(sub, 0, True)
            n2, i2, t2, v2 = top_candidates(self.P, r2, kmax)
            w = n2.shape[1]
            node[f, :w], idx[f, :w], t[f, :w], valid[f, :w] = n2, i2, t2, v2
            valid[f, w:] = False
            self.stats["flat"] += len(f)
        choice = np.zeros(B, dtype=np.int64)
        kk = min(self.cfg.fsb_k, node.shape[1])
        if kk > 1:
            w = self._trials(doms, res, node[:, :kk], idx[:, :kk], t[:, :kk], valid[:, :kk])
            value = w.min(axis=2) + 1e-3 * np.minimum(w.max(axis=2), 1e6)
            value = np.where(valid[:, :kk], value, -np.inf)
            choice = np.argmax(value, axis=1)
        self.stats["branch_s"] += time.monotonic() - ts
        if node.shape[1] == 0:
            return [None] * B
        out = []
        for i, c in enumerate(choice):
            order = [c] + [o for o in range(node.shape[1]) if o != c]
            cand = [(int(node[i, o]), int(idx[i, o]), float(t[i, o])) for o in order[:self.cfg.max_depth]
                    if valid[i, o]]
            out.append(cand or None)
        return out

    def _trials(self, doms, res, node, idx, t, valid):
        """FSB: the worst open margin ``(B, kk, 2)`` of each candidate's two children, each
        bounded once with its parent's parameters (ranking only): first-layer candidates by
        :class:`~.branching.FirstLayerTrials` from the parent's pass, the others by a pass."""
        P = self.P
        B, kk = node.shape
        lower = np.full((B, kk, 2, len(P.b)), np.nan)
        if self.first is not None:
            bb, cc = np.nonzero(valid)
            for s_i, side in enumerate((1, -1)):  # _children's order: side +1 first
                lower[bb, cc, s_i] = self.first.lower(P, res, bb, node[bb, cc], idx[bb, cc], np.full(len(bb), side))
            self.stats["fsb_no_pass"] += int((~np.isnan(lower[bb, cc, 0]).all(axis=1)).sum())
        todo = [(i, c) for i in range(B) for c in range(kk) if valid[i, c] and np.isnan(lower[i, c, 0]).all()]
        if todo:
            parents = _records(doms, res, P, doms.open)
            trial = [dict(parents[i], split=[(node[i, c], idx[i, c], t[i, c])]) for i, c in todo]
            tr = self.bound(_batch(_children(trial, self.K), P, self.K), 0, False, sound=False)
            ii, cc = (np.array(v) for v in zip(*todo))
            lower[ii, cc] = tr["lower"].reshape(len(todo), 2, -1)
        lower = lower.reshape(B * kk * 2, -1)
        opens = np.repeat(doms.open, 2 * kk, axis=0)
        return _worst_margin(P, lower, opens & ~P.proved_disjuncts(lower)).reshape(B, kk, 2)

    def _flat(self, doms, score, valid):
        """``(B,)``: subdomains with splits whose every candidate scores below :data:`FLAT`
        (intercept gradients ~0: e.g. the only path to the earlier layers runs through a
        neuron whose lower line has slope 0, and its inactive side's bound is a constant)."""
        if not self.cfg.flat_beta or score.shape[1] == 0:
            return np.zeros(len(doms), dtype=bool)
        best = np.where(valid, score, -np.inf).max(axis=1)
        return (best < FLAT) & (doms.splits[0] >= 0).any(axis=1) & valid.any(axis=1)

    def attack(self, res, open_):
        """Try the minimisers of the worst children's linear bounds."""
        from .attack import forward_flat

        if res["x"] is None:
            return
        ts = time.monotonic()
        diff = res["lower"] - self.P.b[None]
        live = ~res["empty"]
        cand = (diff < 0) & live[:, None] & (open_[:, self.P.owner])
        bb, kk = np.nonzero(cand)
        if len(bb):
            order = np.argsort(diff[bb, kk])[:128]
            xs = res["x"][bb[order], kk[order]]
            y = forward_flat(self.s.net.graph, xs)
            m = self.objective.margins(y).min(axis=1)
            tol = 1e-6 * (1 + float(np.abs(self.P.b).max(initial=0)))
            bad = m <= tol
            if bad.any() and self.s.confirm(xs[bad][np.argsort(m[bad])], self.cs.case):
                raise Decided("sat")
        self.stats["attack_s"] += time.monotonic() - ts

    def push(self, recs, lower, splits):
        for r, lo, sp in zip(recs, lower, splits):
            r["split"] = sp
            w = float(_worst_margin(self.P, lo[None], r["open"][None])[0])
            heapq.heappush(self.heap, (w, next(self.tick), r))
        self.stats["max_queue"] = max(self.stats["max_queue"], len(self.heap))

    def settle(self, doms, res, meta=None):
        """Proofs, leaves, attack and next splits of freshly bounded subdomains ``doms``
        (``meta``: their records from :func:`_children`, for the stall rule)."""
        P = self.P
        lower = res["lower"]
        open_now = doms.open & ~P.proved_disjuncts(lower)
        done = ~open_now.any(axis=1) | res["empty"]
        self.stats["proved"] += int(done.sum())
        self.attack(res, open_now)
        live = np.flatnonzero(~done)
        if not len(live):
            return True
        sub = DomainBatch(tuple(a[live] for a in doms.splits), doms.beta[live], doms.alpha[live], open_now[live])
        sub_res = {k: (v[live] if isinstance(v, np.ndarray) else v) for k, v in res.items()}
        sub_res["bounds"] = {n: (lo[live], hi[live]) for n, (lo, hi) in res["bounds"].items()}
        sub_res["scores"] = {n: (a[live], b[live]) for n, (a, b) in res["scores"].items()}
        sub_res["lines"] = {n: tuple(np.broadcast_to(v, res["scores"][n][0].shape)[live] for v in ls)
                            for n, ls in res["lines"].items()}
        if "capture" in res:
            sub_res["capture"] = {k: (v if k == "rows" or v is None else v[live]) for k, v in res["capture"].items()}
        splits = self.decide(sub, sub_res)
        recs = _records(sub, sub_res, P, open_now[live])
        margin = _worst_margin(P, lower[live], open_now[live])
        ok = True
        gone = set()
        for i, (r, sp) in enumerate(zip(recs, splits)):
            r["m"], r["stall"], r["milp_next"], r["milp_dnext"] = float(margin[i]), 0, 0, 0
            if meta is not None:  # the stall rule: no progress over stall_k splits -> exact MILP
                m0 = meta[live[i]]
                r["stall"] = 0 if r["m"] > m0["m"] + 1e-5 * (1 + abs(m0["m"])) else m0["stall"] + 1
                r["milp_next"], r["milp_dnext"] = m0["milp_next"], m0["milp_dnext"]
            if sp is None:  # linear on its subdomain: decide it exactly
                if not self.leaf(r, sub_res["bounds"], i):
                    ok = False
            elif self._milp_due(r) and self.sub_milp(r, sub_res["bounds"], i):
                gone.add(i)
        keep = [i for i, sp in enumerate(splits) if sp is not None and i not in gone]
        self.push([recs[i] for i in keep], lower[live][keep], [splits[i] for i in keep])
        return ok

    def _milp_due(self, r):
        c = self.cfg
        stalled = c.stall_k and r["stall"] >= max(c.stall_k, r["milp_next"])
        deep = c.milp_depth and len(r["node"]) >= max(c.milp_depth, r["milp_dnext"])
        return bool(stalled or deep)

    def sub_milp(self, rec, bounds, i):
        """The exact MILP of a stalled subdomain (its clamped bounds as big-M, its splits as
        the split neurons' bounds), ``milp_s`` seconds per open disjunct: True when HiGHS
        proves it; a confirmed counterexample raises ``Decided("sat")``; otherwise the
        subdomain is branched on and tried again after twice as many stalled splits."""
        from .milp import NotApplicable, milp_size

        rec["milp_next"], rec["milp_dnext"] = 2 * max(rec["stall"], 1), 2 * max(len(rec["node"]), 1)
        if self.milp_off:
            return False
        if self.milp_spent > self.cfg.milp_share * (time.monotonic() - self.t0):
            return False
        one = _one_domain(bounds, i)
        try:
            nb = milp_size(self.P.graph, one)[0]
        except NotApplicable as e:
            self.milp_off = str(e)[:120]
            return False
        if nb > self.cfg.milp_binaries:
            return False
        ts = time.monotonic()
        self.stats["milp_tried"] += 1
        try:
            proved = self.exactly(rec, one, self.cfg.milp_s)
        finally:
            self.milp_spent += time.monotonic() - ts
            self.stats["milp_s"] += time.monotonic() - ts
        self.stats["milp_proved"] += int(proved)
        return proved

    def leaf(self, rec, bounds, i):
        self.stats["leaves"] += 1
        proved = self.exactly(rec, _one_domain(bounds, i))
        self.stats["open_leaves"] += int(not proved)
        return proved

    def exactly(self, rec, one, time_limit: float = 10.0):
        """Decide one subdomain (node bounds ``one``) by :func:`~.milp.solve_leaf`: True when
        proved; a counterexample onnxruntime confirms raises ``Decided("sat")``."""
        from .milp import solve_leaf

        verdict, _ = solve_leaf(self.s, self.P, one, rec, self.cs.case, time_limit, self.milp_cache)
        if verdict == "sat":
            raise Decided("sat")
        self.stats["proved"] += int(verdict == "proved")
        return verdict == "proved"

    def run(self, root_open):
        P, K = self.P, self.K
        root = DomainBatch((np.full((1, 0), -1), np.zeros((1, 0), int), np.zeros((1, 0), int), np.zeros((1, 0))),
                           np.zeros((1, 0, K), np.float32), self.root_alpha.astype(np.float32), root_open[None])
        res = self.bound(root, 0, True)
        self.stats["bounded"] += 1
        complete = self.settle(root, res)
        while self.heap:
            self.s.check_time()
            if len(self.heap) > self.max_domains:
                self.stats["stopped"] = f"domain limit {self.max_domains}"
                return False
            self.stats["worst_margin"] = round(float(self.heap[0][0]), 6)  # over every open subdomain
            n = min(len(self.heap), self.batch)
            parents = [heapq.heappop(self.heap)[2] for _ in range(n)]
            # few open subdomains: split each on several neurons at once to fill the batch
            depth = int(np.clip(np.floor(np.log2(2 * self.batch / n)), 1, self.cfg.max_depth))
            kids = _children(parents, K, depth)
            doms = _batch(kids, P, K)
            ts = time.monotonic()
            res = self.bound(doms, self.cfg.iters, True)
            # a parent's bound holds on its children's subdomains too: a child keeps the better
            res["lower"] = np.maximum(res["lower"], np.stack([r["lower"] for r in kids]))
            self.stats["bounded"] += len(kids)
            self.stats["rounds"] += 1
            complete &= self.settle(doms, res, kids)
            dt = time.monotonic() - ts
            lo_s, hi_s = self.cfg.round_s
            if dt < lo_s and self.batch < self.max_batch:
                self.batch = min(self.max_batch, self.batch * 2)
            elif dt > hi_s and self.batch > 4:
                self.batch //= 2
        if not complete:
            self.stats["stopped"] = f"{self.stats['open_leaves']} leaf subdomain(s) undecided"
        return complete


def _default_memory():
    from ..bounds.passes import default_max_memory

    return default_max_memory()


def neuron_bab(s, cs, P: BabProblem, root_alpha, root_open, stats: dict, settings=None) -> bool:
    """Branch and bound for case ``cs`` of solver ``s`` (see the module docstring); updates
    ``stats`` (``bounded``, ``rounds``, ``max_queue``, ``proved``, ``leaves``, times).
    Returns True when every subdomain is proved; raises ``Decided("sat")`` on a confirmed
    counterexample and ``TimeUp`` at the deadline."""
    from ..bounds.optimized import torch_backend
    from .attack import CaseObjective

    for k in ("bounded", "rounds", "max_queue", "proved", "leaves", "open_leaves", "flat", "milp_tried", "milp_proved",
              "fsb_no_pass"):
        stats.setdefault(k, 0)
    for k in ("bound_s", "branch_s", "attack_s", "milp_s"):
        stats.setdefault(k, 0.0)
    search = _Search(s, cs, P, root_alpha, torch_backend(), settings or BabSettings(), stats)
    search.objective = CaseObjective(cs.case.y_disjuncts, s.n_out)
    return search.run(root_open)


def bab_by_disjunct(s, cs, P: BabProblem, root_alpha, root_lower, stats: dict, settings=None, proved=None) -> bool:
    """:func:`neuron_bab` once per disjunct of ``P`` (each search bounds that disjunct's rows
    only; the case holds when every disjunct is infeasible), the worst first by
    ``root_lower (1, K)`` (a counterexample most likely violates it); ``proved(j)`` is called
    as each disjunct ``j`` is proved. Returns True when all are; stops at the first that is
    not (``stats``: ``disjuncts``, ``disjuncts_proved`` and :func:`neuron_bab`'s, summed)."""
    stats["disjuncts"] = P.n_disj
    stats.setdefault("disjuncts_proved", 0)
    for j in np.argsort(P.disjunct_margins(root_lower)[0], kind="stable"):
        P_j, rows = P.disjunct(int(j))
        if not neuron_bab(s, cs, P_j, root_alpha[:, rows], np.ones(1, dtype=bool), stats, settings):
            return False
        stats["disjuncts_proved"] += 1
        if proved is not None:
            proved(int(j))
    return True
