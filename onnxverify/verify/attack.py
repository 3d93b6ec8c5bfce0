"""Counterexample search for VNN-LIB cases: sampling and PGD, confirmed by onnxruntime.

A :class:`~onnxverify.specs.vnnlib.Case` is unsafe at ``x`` (in its box) when, for some disjunct
``(A, b)``, every row holds: ``A y <= b``. The *margin* of a disjunct is
``max_k (A y - b)_k``: the point violates the property iff some margin is ``<= 0``. The
attack minimises the margin of one disjunct (or the smallest of all of them) over the box
with projected sign-gradient descent. Gradients come from the IR itself
(:func:`input_gradient`: a backward pass through the graph with the forward values kept), so
no torch is needed. A candidate only counts after onnxruntime, run on the float32 input that
is written to the result file, confirms it with :func:`~onnxverify.specs.vnnlib.is_violated`.
"""
from __future__ import annotations

import time

import numpy as np

from ..backend import get_backend
from ..ir import Graph
from ..ops import evaluate, rule_of
from ..specs.vnnlib import is_violated

__all__ = ["GradientUnavailable", "CaseObjective", "input_gradient", "value_and_grad", "snap_to_box",
           "confirms", "Confirmer", "sample_attack", "pgd_attack", "local_pgd"]


class GradientUnavailable(RuntimeError):
    """The graph has an op whose derivative we do not know (the attack falls back to sampling)."""


# ----------------------------------------------------------------------------- gradients
def input_gradient(graph: Graph, env: dict, g_out, backend=None):
    """Vector-Jacobian product through the graph: each rule's ``vjp`` in reverse order.

    ``env``: every node's value from ``evaluate(graph, x, keep_all=True)``; ``g_out``:
    ``(B, *output_shape)`` cotangent of the output. Returns ``(B, *input_shape)``:
    the gradient of ``sum(g_out * f(x))`` with respect to ``x``, per sample. Raises
    :class:`GradientUnavailable` for a rule without a VJP.
    """
    bk = get_backend(backend)
    grads = {graph.output: g_out}
    for node in graph.reversed_from(graph.output):
        g = grads.pop(node.name, None)
        if g is None or node is graph.input:
            if node is graph.input and g is not None:
                grads[node.name] = g
            continue
        try:
            gins = rule_of(node).vjp(bk, node, g, [env[i] for i in node.inputs], env[node.name])
        except NotImplementedError:
            raise GradientUnavailable(f"no derivative for op {node.op} (node {node.name})") from None
        for name, gi in zip(node.inputs, gins):
            grads[name] = grads[name] + gi if name in grads else gi
    g_in = grads.get(graph.input.name)
    if g_in is None:  # the output does not depend on the input
        g_in = bk.zeros((g_out.shape[0],) + tuple(graph.input_shape), dtype=g_out.dtype)
    return g_in


def value_and_grad(graph: Graph, x: np.ndarray, grad_fn):
    """Output and input gradient for a batch.

    ``x``: ``(B, n_in)`` (flat); ``grad_fn(y (B, n_out)) -> g (B, n_out)`` gives the output
    cotangent. Returns ``(y (B, n_out), g_x (B, n_in))`` as float32 NumPy arrays.
    """
    B = x.shape[0]
    xb = np.asarray(x, dtype=np.float32).reshape((B,) + tuple(graph.input_shape))
    env = evaluate(graph, xb, keep_all=True)
    y = np.asarray(env[graph.output]).reshape(B, -1)
    g = np.asarray(grad_fn(y), dtype=np.float32).reshape((B,) + tuple(graph.output_shape))
    gx = input_gradient(graph, env, g)
    return y, np.asarray(gx).reshape(B, -1)


def forward_flat(graph: Graph, x: np.ndarray) -> np.ndarray:
    """IR forward on flat inputs ``(B, n_in)`` -> ``(B, n_out)`` (float32)."""
    B = x.shape[0]
    return np.asarray(evaluate(graph, np.asarray(x, dtype=np.float32).reshape((B,) + tuple(graph.input_shape)))).reshape(B, -1)


# ----------------------------------------------------------------------------- objective
class CaseObjective:
    """Margins of the (non-empty) output disjuncts of one case.

    ``R (n_rows, n_out)`` stacks all rows, ``b (n_rows,)``; disjunct ``d`` owns rows
    ``starts[d]:starts[d+1]``. ``margins(y)`` is ``(B, D)``; a point violates iff some
    margin ``<= 0``.
    """

    def __init__(self, disjuncts, n_out: int):
        disjuncts = [(np.asarray(A, dtype=np.float64).reshape(-1, n_out), np.asarray(b, dtype=np.float64).ravel())
                     for A, b in disjuncts]
        if not disjuncts or any(A.shape[0] == 0 for A, _ in disjuncts):
            raise ValueError("CaseObjective needs disjuncts with at least one row each")
        self.R = np.concatenate([A for A, _ in disjuncts]).astype(np.float32)
        self.b = np.concatenate([b for _, b in disjuncts]).astype(np.float32)
        sizes = [A.shape[0] for A, _ in disjuncts]
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.owner = np.repeat(np.arange(len(sizes)), sizes)  # (n_rows,) disjunct of each row
        self.n_disjuncts = len(sizes)

    def row_values(self, y):
        return np.asarray(y, dtype=np.float32) @ self.R.T - self.b  # (B, n_rows)

    def margins(self, y):
        return np.maximum.reduceat(self.row_values(y), self.starts, axis=1)  # (B, D)

    #: the gradients :meth:`loss_grad` offers (``kinds``): the margin's, the sum of the
    #: positive rows', the soft maximum's
    GRADIENTS = ("margin", "summed", "softmax")

    def loss_grad(self, y, targets, kinds=None):
        """Per-sample loss (margin of disjunct ``targets[i]``, or of the best one where the
        target is -1) and a descent direction for it with respect to ``y``: ``(B,)``,
        ``(B, n_out)``.

        ``kinds (B,)`` int indexes :data:`GRADIENTS` (default 0): the gradient of the
        margin (its worst row), of the sum of the disjunct's positive rows
        ``sum_k max(A y - b, 0)_k``, or of the rows' soft maximum ``log sum_k exp(A y -
        b)_k``. All three vanish or are small only near the unsafe set, but the last two
        pull several rows at once: on targeted specs with many rows the margin's gradient
        zig-zags between the two worst rows."""
        v = self.row_values(y)
        m = np.maximum.reduceat(v, self.starts, axis=1)
        d = np.where(targets >= 0, targets, np.argmin(m, axis=1))
        mine = self.owner[None, :] == d[:, None]
        masked = np.where(mine, v, -np.inf)
        g = self.R[np.argmax(masked, axis=1)]
        if kinds is not None:
            summed, soft = kinds == 1, kinds == 2
            if summed.any():
                g = np.where(summed[:, None], (mine & (v > 0)).astype(np.float32) @ self.R, g)
            if soft.any():
                p = np.exp(masked - masked.max(axis=1, keepdims=True))
                g = np.where(soft[:, None], (p / p.sum(axis=1, keepdims=True)).astype(np.float32) @ self.R, g)
        return m[np.arange(len(d)), d], g


# ----------------------------------------------------------------------------- confirmation
def snap_to_box(x, lower, upper):
    """Float32 values inside ``[lower, upper]`` (float64 bounds) nearest to ``x``: the input
    that onnxruntime sees and the result file records. Dimensions whose interval holds no
    float32 value keep the rounded value. Returns float64 copies of the float32 values."""
    x32 = np.clip(np.asarray(x, dtype=np.float64), lower, upper).astype(np.float32)
    lo, hi = np.asarray(lower), np.asarray(upper)
    below = x32 < lo
    x32 = np.where(below, np.nextafter(x32, np.float32(np.inf)), x32)
    above = x32 > hi
    x32 = np.where(above, np.nextafter(x32, np.float32(-np.inf)), x32)
    return x32.astype(np.float64)


def confirms(prop, x_flat, y_flat) -> bool:
    """Is ``(x, y)`` a counterexample of ``prop`` (a Property or a Case)?

    Exactly :func:`~onnxverify.specs.vnnlib.is_violated` (no tolerance), except for input
    dimensions whose interval contains no float32 number at all (e.g. a fixed input
    ``0.1 <= X_i <= 0.1``): a network with float32 inputs cannot be run inside such a box,
    so there ``x`` may be the nearest float32 value (within one float32 ulp). The output
    condition must always hold exactly on ``y``.
    """
    from ..specs.vnnlib import Property

    x = np.asarray(x_flat, dtype=np.float64).ravel()
    y = np.asarray(y_flat, dtype=np.float64).ravel()
    if not np.all(np.isfinite(y)):
        return False
    for case in (prop.cases if isinstance(prop, Property) else [prop]):
        lo, hi = case.x_lower, case.x_upper
        xc = np.clip(x, lo, hi)
        off = xc != x
        if off.any():
            lo32, hi32 = snap_to_box(lo, lo, hi), snap_to_box(hi, lo, hi)
            empty = (lo32 < lo) | (lo32 > hi) | (hi32 < lo) | (hi32 > hi)  # no float32 inside
            ulp = np.spacing(np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)).astype(np.float64)
            if np.any(off & ~empty) or np.any(np.abs(x - xc)[off] > ulp[off]):
                continue
        if is_violated(case, xc, y):
            return True
    return False


class Confirmer:
    """Checks candidate inputs with onnxruntime against the whole property.

    ``ort``: an :class:`~onnxverify.reference.OrtModel`; ``input_shape``: per-sample shape.
    ``found`` holds the first confirmed ``(x_flat, y_flat)`` (float64).
    """

    def __init__(self, ort, prop, input_shape, max_per_call: int = 64):
        self.ort, self.prop, self.input_shape = ort, prop, tuple(input_shape)
        self.max_per_call = max_per_call
        self.found = None
        self.n_checked = 0
        self.n_rejected = 0

    def __call__(self, xs, case) -> bool:
        """``xs (k, n_in)`` candidates inside ``case``'s box, best first."""
        if self.found is not None:
            return True
        xs = np.asarray(xs, dtype=np.float64)[: self.max_per_call]
        if len(xs) == 0:
            return False
        xs = snap_to_box(xs, case.x_lower, case.x_upper)
        ys = np.asarray(self.ort(xs.astype(np.float32).reshape((len(xs),) + self.input_shape)))
        ys = ys.reshape(len(xs), -1).astype(np.float64)
        self.n_checked += len(xs)
        for x, y in zip(xs, ys):
            if confirms(self.prop, x, y):
                self.found = (x.copy(), y.copy())
                return True
        self.n_rejected += len(xs)
        return False


def _candidates(x, margins, tol):
    """Rows of ``x`` whose best margin is ``<= tol``, most violating first."""
    best = margins.min(axis=1)
    idx = np.flatnonzero(best <= tol)
    return x[idx[np.argsort(best[idx])]]


def _margin_tol(objective):
    return 1e-6 * (1.0 + float(np.abs(objective.b).max(initial=0.0)))


# ----------------------------------------------------------------------------- attacks
def sample_attack(forward, case, objective, confirm, rng, n_samples: int, deadline: float, batch: int = 256,
                  keep: int = 8):
    """Uniform samples and random corners of the case box (plus its centre).

    ``forward``: flat inputs ``(B, n_in)`` -> flat outputs ``(B, n_out)`` (e.g.
    ``functools.partial(forward_flat, graph)``).
    Returns ``(found, best_x)``: whether ``confirm`` accepted a point, and up to ``keep``
    points with the smallest best-margin (starting points for PGD), ``(keep, n_in)``.
    """
    lo, hi = case.x_lower, case.x_upper
    n_in = lo.size
    best_x, best_m = np.empty((0, n_in)), np.empty(0)
    tol = _margin_tol(objective)
    done = 0
    while done < n_samples and time.monotonic() < deadline:
        k = min(batch, n_samples - done)
        u = rng.uniform(size=(k, n_in))
        u[: k // 2] = rng.integers(0, 2, size=(k // 2, n_in))  # corners
        if done == 0:
            u[0] = 0.5
        x = lo + u * (hi - lo)
        m = objective.margins(forward(x))
        if confirm(_candidates(x, m, tol), case):
            return True, x[:0]
        best = m.min(axis=1)
        best_x = np.concatenate([best_x, x])
        best_m = np.concatenate([best_m, best])
        order = np.argsort(best_m)[:keep]
        best_x, best_m = best_x[order], best_m[order]
        done += k
    return False, best_x


def pgd_attack(graph, case, objective, confirm, rng, restarts: int, steps: int, deadline: float,
               starts=None, batch: int = 32, step_hi: float = 0.25, step_lo: float = 0.005, record=None) -> bool:
    """Projected sign-gradient descent on disjunct margins over the case box.

    Restarts are spread over the objectives "best disjunct" and, when there are few
    disjuncts, each disjunct separately, and over the gradients of
    :meth:`CaseObjective.loss_grad`; they start from ``starts`` (rows ``(n_in,)``), the
    box centre, then uniform points. The step shrinks from ``step_hi`` to ``step_lo`` times
    the box width (cosine schedule). Every point whose IR margin is ``<= 0`` (within float
    tolerance) goes to ``confirm``. Returns whether a counterexample was confirmed.
    ``record``: a dict whose ``"best"`` is lowered to the smallest margin seen.
    """
    lo, hi = case.x_lower, case.x_upper
    width = hi - lo
    n_in = lo.size
    D = objective.n_disjuncts
    targets_all = np.arange(-1, D) if D <= 32 else np.array([-1])
    tol = _margin_tol(objective)
    starts = np.empty((0, n_in)) if starts is None else np.asarray(starts, dtype=np.float64).reshape(-1, n_in)
    k0 = 0
    while k0 < restarts:
        if time.monotonic() >= deadline:
            return False
        B = min(batch, restarts - k0)
        x = lo + rng.uniform(size=(B, n_in)) * width
        idx = np.arange(k0, k0 + B)
        if k0 == 0:
            x[0] = (lo + hi) / 2
        from_starts = idx < len(starts)
        x[from_starts] = np.clip(starts[idx[from_starts]], lo, hi)
        targets = targets_all[idx % len(targets_all)]
        kinds = (idx // len(targets_all)) % len(CaseObjective.GRADIENTS)
        for t in range(steps):
            y, gx = value_and_grad(graph, x, lambda yy: objective.loss_grad(yy, targets, kinds)[1])
            m = objective.margins(y)
            if record is not None:
                record["best"] = min(record.get("best", np.inf), float(m.min()))
            if confirm(_candidates(x, m, tol), case):
                return True
            if time.monotonic() >= deadline:
                return False
            frac = 0.5 * (1 + np.cos(np.pi * t / max(steps - 1, 1)))
            step = (step_lo + (step_hi - step_lo) * frac) * width
            x = np.clip(x - step * np.sign(gx), lo, hi)
        y = forward_flat(graph, x)
        if confirm(_candidates(x, objective.margins(y), tol), case):
            return True
        k0 += B
    return False


def local_pgd(graph, lo, hi, objective, targets, steps: int, confirm, case, step_hi=0.25, step_lo=0.02) -> bool:
    """Sign-gradient descent from the centres of boxes ``lo, hi (B, n_in)``, each sample
    projected onto its own box (branch and bound's leaves). Returns whether ``confirm``
    accepted a point."""
    x = (lo + hi) / 2
    width = hi - lo
    tol = _margin_tol(objective)
    for t in range(steps):
        y, gx = value_and_grad(graph, x, lambda yy: objective.loss_grad(yy, targets)[1])
        if confirm(_candidates(x, objective.margins(y), tol), case):
            return True
        frac = 0.5 * (1 + np.cos(np.pi * t / max(steps - 1, 1)))
        x = np.clip(x - (step_lo + (step_hi - step_lo) * frac) * width * np.sign(gx), lo, hi)
    return confirm(_candidates(x, objective.margins(forward_flat(graph, x)), tol), case)
