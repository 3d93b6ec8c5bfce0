"""Optimised bounding lines (alpha-CROWN, Xu et al. 2021): the free lines of the nonlinear
rules become parameters, optimised by projected gradient ascent on the bound.

A rule is optimisable when it has ``alpha_count`` parameters per neuron, ``alpha_init`` and
``alpha_lines`` (see :mod:`onnxverify.ops.relu`, ``paramramp``, ``sigmoid``): every parameter
lies in ``[0, 1]`` and every value there gives sound lines, so the projection is a clamp
and every iterate's bounds are sound. Each bounded quantity has its own parameters: for a
backward pass from node ``s`` with ``R`` rows, every optimisable node ``n`` upstream of ``s``
gets ``alpha_count`` arrays ``(B, R, *shape_n)`` (one line per row and neuron, passed to
:func:`~.backward.backward` through its ``relax`` hook). Upper bounds are lower bounds of the
negated rows (``R = 2 K``), so lower and upper bounds get separate lines.

The loop runs the same op rules on the torch backend (autograd gives the gradients): each
iteration recomputes the intermediate bounds (CROWN passes with their own parameters, in
topological order, intersected with the best bounds of earlier iterations) and the output
bounds, then takes an Adam step on every parameter. Iteration 0 uses the strategy's lines
(``alpha_init``), so the result is never looser than CROWN with the same strategy; the
output and intermediate bounds returned are the best of all iterations.

Shapes: ``B`` batch, ``K`` spec rows, ``n_out`` outputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import BackendError, MemoryLimitError
from ..ops import rule_of
from .backward import backward
from .engine import LinearEngine
from .ibp import interval_bounds
from .passes import bound_nodes, default_max_memory, gb, itemsize, undecided_mask
from .plan import exact_by_ibp

__all__ = ["AlphaResult", "Adam", "alpha_crown", "torch_backend", "optimizable", "alpha_relax", "init_alphas",
           "clamp_alphas", "row_index"]


class Adam:
    """Adam ascent steps on tensors (``torch.optim`` would import ``torch._dynamo``, seconds
    on a busy machine). ``groups``: ``[(tensors, lr)]``; :meth:`step` reads ``.grad`` of the
    objective's *negation* (as after ``(-obj).backward()``); ``decay`` multiplies every lr
    after each step."""

    def __init__(self, groups, decay: float = 1.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.groups = [(list(ts), lr) for ts, lr in groups]
        self.decay, self.b1, self.b2, self.eps, self.t = decay, b1, b2, eps, 0
        self.m = [[None] * len(ts) for ts, _ in self.groups]
        self.v = [[None] * len(ts) for ts, _ in self.groups]

    def zero_grad(self):
        for ts, _ in self.groups:
            for t in ts:
                t.grad = None

    def step(self):
        import torch

        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        with torch.no_grad():
            for gi, (ts, lr) in enumerate(self.groups):
                for i, t in enumerate(ts):
                    if t.grad is None:
                        continue
                    g = t.grad
                    m = self.m[gi][i] = g * (1 - self.b1) if self.m[gi][i] is None else \
                        self.m[gi][i] * self.b1 + g * (1 - self.b1)
                    v = self.v[gi][i] = g * g * (1 - self.b2) if self.v[gi][i] is None else \
                        self.v[gi][i] * self.b2 + g * g * (1 - self.b2)
                    t -= lr * (m / c1) / ((v / c2).sqrt() + self.eps)
            self.groups = [(ts, lr * self.decay) for ts, lr in self.groups]


def torch_backend(device=None):
    """The torch backend, or :class:`~onnxverify.errors.BackendError` saying how to get it."""
    from ..backend import get_backend

    try:
        return get_backend("torch" if device is None else f"torch:{device}")
    except BackendError as e:
        raise BackendError(f"optimised bounds (alpha-CROWN, beta-CROWN) need torch for their gradients: {e}") from None


def optimizable(node) -> bool:
    """Whether ``node``'s rule has optimisable lines."""
    return hasattr(rule_of(node), "alpha_lines")


def _upstream(graph, start):
    """Optimisable nonlinear nodes a pass from ``start`` crosses (topological order)."""
    anc = graph.ancestors(start)
    return [n for n in graph.computed if n.name in anc and n.name != start and optimizable(n)]


def init_alphas(bk, graph, eng, start, R, strategy, like=None):
    """Fresh parameters (leaf tensors that require grad) for a pass from ``start`` with ``R``
    rows: ``{node name: tuple of (B, R, *shape)}``, each at the strategy's lines."""
    out = {}
    for n in _upstream(graph, start):
        l, u = eng.best(n.inputs[0])
        init = rule_of(n).alpha_init(bk, n, l, u, strategy)
        out[n.name] = tuple(bk.xp.repeat_interleave(a[:, None], R, dim=1).detach().clone().requires_grad_(True)
                            for a in init)
    return out


def alpha_relax(bk, graph, eng, alphas: dict) -> dict:
    """``{node name: per-row lines}`` for :func:`backward`'s ``relax`` hook, from the
    current bounds of each node's input."""
    relax = {}
    cache = eng.__dict__.setdefault("_alpha_line_cache", {})  # lives as long as the engine
    for name, a in alphas.items():
        node = graph[name]
        l, u = eng.best(node.inputs[0])
        relax[name] = rule_of(node).alpha_lines(bk, node, l, u, a, cache)
    return relax


def clamp_alphas(alphas: dict):
    """Project every parameter onto ``[0, 1]`` (in place)."""
    for a in alphas.values():
        for t in a:
            t.data.clamp_(0.0, 1.0)


def row_index(mask: np.ndarray):
    """Rows of the backward passes for the True entries of ``mask (B, N)``: ``(idx (B, K),
    valid (B, K))``, ``K`` the largest count (short rows padded with index 0, valid 0)."""
    B = mask.shape[0]
    K = int(mask.sum(axis=1).max()) if mask.size else 0
    idx = np.zeros((B, K), dtype=np.int64)
    valid = np.zeros((B, K))
    for b in range(B):
        nz = np.flatnonzero(mask[b])
        idx[b, :len(nz)] = nz
        valid[b, :len(nz)] = 1.0
    return idx, valid


@dataclass
class AlphaResult:
    """``lower``/``upper`` ``(B, K)`` NumPy (``upper`` None when not asked for); ``bounds``:
    the best intermediate bounds ``{name: (lower, upper)}`` (NumPy ``(B, *shape)``);
    ``alphas``: the output pass's final parameters ``{name: tuple of (B, R, *shape)}``
    (NumPy, ``R = K`` lower rows, then ``K`` upper rows when ``upper``); ``init_lower``: the
    bound at iteration 0 (CROWN with the strategy); ``history``: objective per iteration."""

    lower: np.ndarray
    upper: np.ndarray | None
    bounds: dict
    alphas: dict
    init_lower: np.ndarray
    iterations: int = 0
    time_s: float = 0.0
    history: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


class _Plan:
    """Which bound nodes get backward passes and with which rows (fixed at iteration 0:
    bounds only tighten, so the undecided neurons of later iterations are among them)."""

    def __init__(self, graph):
        self.needs = set(bound_nodes(graph))
        self.exact = exact_by_ibp(graph)
        self.rows: dict = {}  # name -> one-hot (B, K, N) as a torch tensor, or None

    def passes(self, node) -> bool:
        return node.name in self.needs and not rule_of(node).monotone and node.name not in self.exact


def _pass_bytes(graph, start, B, rows, item) -> int:
    """Bytes a pass of ``rows`` rows from ``start`` keeps for autograd (a few arrays of
    ``(B, rows, *shape)`` per node it crosses)."""
    return int(B * rows * sum(graph[a].size for a in graph.ancestors(start)) * item * 4)


def alpha_crown(graph, input_set, C, strategy: str = "adaptive", dtype=np.float64, iters: int = 20,
                lr: float = 0.1, lr_decay: float = 0.98, upper: bool = True, intermediate: bool = True,
                objective=None, done=None, deadline: float | None = None, max_memory: int | None = None,
                device=None, patience: int = 5) -> AlphaResult:
    """alpha-CROWN bounds of ``C y`` over ``input_set``.

    ``C``: ``(B, K, n_out)`` (or ``(K, n_out)``). ``iters``: Adam steps after iteration 0;
    ``upper``: also optimise upper bounds; ``intermediate``: optimise the intermediate bounds'
    lines too (else they stay CROWN's and only the output pass is optimised; chosen
    automatically when the intermediate passes would not fit in ``max_memory``).
    ``objective(lower, upper) -> scalar tensor`` is maximised (default ``sum(lower) -
    sum(upper)``); ``done(lower) -> bool`` stops early (e.g. every row proved); the loop
    also stops after ``patience`` iterations without improvement and at ``deadline``
    (``time.monotonic()``)."""
    t0 = time.monotonic()
    bk = torch_backend(device)
    torch = bk.xp
    max_memory = max_memory or default_max_memory()
    input_set = input_set.batched(graph.input_shape)
    C = np.asarray(C, dtype=np.float64)
    env = interval_bounds(bk, graph, input_set, dtype)
    B = int(env[graph.input.name][0].shape[0])
    if C.ndim == 2:
        C = np.broadcast_to(C, (B,) + C.shape)
    K = C.shape[1]
    out = graph[graph.output]
    lam = bk.reshape(bk.asarray(np.ascontiguousarray(C), dtype=dtype), (B, K) + tuple(out.shape))
    lam_rows = torch.cat([lam, -lam], dim=1) if upper else lam
    R_out = lam_rows.shape[1]
    plan = _Plan(graph)
    objective = objective or (lambda lo, hi: lo.sum() - (hi.sum() if hi is not None else 0.0))
    state = {"alphas": {}, "out": {}, "best": {}, "optimize_inter": intermediate, "need": 0}

    def iteration(it):
        eng = LinearEngine(graph, input_set, bk, dtype, strategy, env)
        for node in graph.computed:
            rule = rule_of(node)
            if not rule.affine:
                eng.relax_node(node.name)
            if node.name not in plan.needs:
                continue
            eng.tighten(node.name, *rule.interval(bk, node, *[eng.best(i) for i in node.inputs]))
            if node.name in state["best"]:
                eng.tighten(node.name, *state["best"][node.name])
            if not plan.passes(node):
                continue
            if it == 0:
                lo, hi = eng.best(node.name)
                mask = undecided_mask(bk, graph, node.name, lo, hi)
                flat = None if mask is None else np.asarray(bk.to_numpy(bk.reshape(mask, (B, -1))))
                if flat is None or not flat.any():
                    plan.rows[node.name] = None
                    continue
                idx, valid = row_index(flat)
                onehot = np.zeros((B, idx.shape[1], flat.shape[1]))
                for b in range(B):
                    onehot[b, np.arange(idx.shape[1]), idx[b]] = valid[b]
                plan.rows[node.name] = bk.asarray(onehot, dtype=dtype)
            onehot = plan.rows.get(node.name)
            if onehot is None or (it > 0 and node.name not in state["alphas"]):
                continue  # nothing undecided, or lines not optimised here: the best bounds stand
            k = onehot.shape[1]
            if it == 0 and state["optimize_inter"]:
                state["need"] += _pass_bytes(graph, node.name, B, 2 * k, itemsize(dtype))
                if state["need"] > max_memory:
                    state["optimize_inter"] = False
            if it == 0 and not state["optimize_inter"]:
                lo_k, hi_k = backward(eng, node.name, bk.reshape(onehot, (B, k) + tuple(node.shape)))
            else:
                rows = torch.cat([onehot, -onehot], dim=1)
                if node.name not in state["alphas"]:
                    state["alphas"][node.name] = init_alphas(bk, graph, eng, node.name, 2 * k, strategy)
                relax = alpha_relax(bk, graph, eng, state["alphas"][node.name])
                low, _ = backward(eng, node.name, bk.reshape(rows, (B, 2 * k) + tuple(node.shape)),
                                  upper=False, relax=relax)
                lo_k, hi_k = low[:, :k], -low[:, k:]
            hit = onehot.sum(dim=1) > 0
            shape = (B,) + tuple(node.shape)
            lo, hi = (bk.reshape(v, (B, -1)) for v in eng.best(node.name))
            new_lo = torch.where(hit, torch.maximum(lo, torch.einsum("bk,bkn->bn", lo_k, onehot)), lo)
            new_hi = torch.where(hit, torch.minimum(hi, torch.einsum("bk,bkn->bn", hi_k, onehot)), hi)
            eng.tighten(node.name, bk.reshape(new_lo, shape), bk.reshape(new_hi, shape))
        if it == 0:
            need = _pass_bytes(graph, graph.output, B, R_out, itemsize(dtype))
            if need > max_memory:
                raise MemoryLimitError(f"alpha-crown: the output pass needs about {gb(need)}, over the memory "
                                       f"limit {gb(max_memory)}")
            state["out"] = init_alphas(bk, graph, eng, graph.output, R_out, strategy)
        relax = alpha_relax(bk, graph, eng, state["out"])
        low, _ = backward(eng, graph.output, lam_rows, upper=False, relax=relax)
        lower, hi = (low[:, :K], -low[:, K:]) if upper else (low, None)
        return eng, lower, hi

    to_np_ = lambda v: np.asarray(bk.to_numpy(v), dtype=np.float64)  # noqa: E731
    best_lo = best_hi = init_lo = None
    history = []
    opt = None
    best_obj, stale, it = -np.inf, 0, 0
    for it in range(iters + 1):
        if deadline is not None and time.monotonic() >= deadline and it > 0:
            break
        eng, lower, hi = iteration(it)
        with torch.no_grad():
            lo_d = lower.detach()
            best_lo = lo_d.clone() if best_lo is None else torch.maximum(best_lo, lo_d)
            if hi is not None:
                best_hi = hi.detach().clone() if best_hi is None else torch.minimum(best_hi, hi.detach())
            for name in plan.needs:
                if name in eng.bounds:
                    l_, u_ = (v.detach() for v in eng.bounds[name])
                    state["best"][name] = (l_, u_)
        if it == 0:
            init_lo = lo_d.clone()
        obj = objective(lower, hi)
        history.append(float(obj.detach()))
        if history[-1] > best_obj + 1e-4 * (1 + abs(best_obj) if np.isfinite(best_obj) else 1):
            best_obj, stale = history[-1], 0
        else:
            stale += 1
        if it == iters or stale >= patience or (done is not None and done(to_np_(best_lo))):
            break
        groups = list(state["alphas"].values()) + [state["out"]]
        params = [t for a in groups for v in a.values() for t in v]
        if not params:
            break
        if opt is None:
            opt = Adam([(params, lr)], decay=lr_decay)
        opt.zero_grad()
        (-obj).backward()
        opt.step()
        for a in groups:
            clamp_alphas(a)
    to_np = lambda v: None if v is None else np.asarray(bk.to_numpy(v), dtype=np.float64)  # noqa: E731
    bounds = {n: (to_np(l_), to_np(u_)) for n, (l_, u_) in state["best"].items()}
    alphas = {n: tuple(to_np(t) for t in a) for n, a in state["out"].items()}
    return AlphaResult(to_np(best_lo), to_np(best_hi), bounds, alphas, to_np(init_lo), it, time.monotonic() - t0,
                       history, {"intermediate_optimized": state["optimize_inter"]})
