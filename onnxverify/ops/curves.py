"""Bounding lines of scalar functions that are sound by construction, for any slope.

For a slope ``a``, the tightest upper line ``a z + b`` of ``f`` on ``[l, u]`` has
``b = sup_{z in [l, u]} (f(z) - a z)``. Split ``[l, u]`` at the *break points* of ``f``
(kinks, jumps, inflection points): on each piece ``f'`` is monotone, so ``f(z) - a z`` is
convex or concave there and its supremum is at a piece end or at a stationary point
``f'(z) = a``. The supremum over ``[l, u]`` is therefore the maximum over a finite candidate
set: ``l``, ``u``, the break points inside, and one stationary point per piece
(:meth:`CurveRule.stationary`; at a jump the candidate value is the largest one-sided
limit). Extra candidates inside ``[l, u]`` never hurt soundness (their values are attained
or approached by f), so every candidate is clipped into ``[l, u]``. Lower lines are the
mirror (infimum of ``f(z) - a z``).

Soundness therefore never depends on the slope: a strategy only *chooses* slopes.

* ``constant``: slope 0 -- the lines are the interval bounds (the linear methods then
  reproduce IBP).
* ``tight``: lines whose extreme over ``[l, u]`` equals f's (what Theorem 2 needs): the upper
  line is anchored at the maximiser of f when it is an end point (the steepest slope for
  which that end still attains ``sup (f - a z)``: the chord for a convex f, the tangent at
  ``u`` for a concave increasing f), else horizontal; the lower line mirrors this.
* ``adaptive``: the line of least area between line and curve: for the upper line the
  supporting line at the midpoint ``m`` of f's concave envelope (chord for convex pieces,
  tangent at ``m`` for concave ones, CROWN's tangent-through-an-end-point for S shapes),
  found by bisection on the slope (the maximiser of ``f(z) - a z`` moves left as ``a`` grows).

Rules with a closed form (convex or concave on the interval) give their slopes directly
(:meth:`CurveRule.closed_slopes`), skipping the bisections. Intercepts are rounded outwards
for the output dtype (a few ulps of the line's terms, plus the rule's ``value_abs_error``).

Inputs where f is undefined (``domain``: NaN in onnxruntime, e.g. ``log`` of a negative
number) are left out: a NaN output satisfies no constraint, so it is never a counterexample.
"""
from __future__ import annotations

import numpy as np

from .generic import ElementwiseRule

INF = float("inf")
BISECT = 48  # bisection steps on a slope (in asinh space: relative precision ~1e-13)
SOLVE = 40  # bisection steps for a stationary point on a piece
NEWTON = 8  # safeguarded Newton steps for one (quadratic convergence from the bracket's midpoint)


def eps_of(dtype) -> float:
    if type(dtype).__module__.startswith("torch"):  # a torch dtype
        import torch

        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


def clip(bk, z, l, u):
    """``z`` clipped into ``[l, u]``; NaN becomes ``l``."""
    z = bk.where(z == z, z, l)
    return bk.minimum(bk.maximum(z, l), u)


def _asinh(bk, a):
    a = bk.maximum(bk.minimum(a, 1e150), -1e150)
    s = bk.log(bk.abs(a) + bk.sqrt(a * a + 1.0))
    return bk.where(a < 0, -s, s)


def _sinh(bk, s):
    return (bk.exp(s) - bk.exp(-s)) / 2


def solve_monotone(bk, g, target, lo, hi, iters=SOLVE, dg=None):
    """``z`` in ``[lo, hi]`` with ``g(z) ~= target`` for ``g`` monotone on ``[lo, hi]`` (either
    direction); an end point when there is no solution. With ``dg`` (g's derivative, or an
    approximation), safeguarded Newton steps: a step that leaves the bracket bisects."""
    inc = g(hi) >= g(lo)
    z = lo / 2 + hi / 2
    for _ in range(iters):
        r = g(z) - target
        right = bk.where(inc, r < 0, r > 0)
        lo, hi = bk.where(right, z, lo), bk.where(right, hi, z)
        mid = lo / 2 + hi / 2
        if dg is None:
            z = mid
            continue
        step = z - r / dg(z)
        z = bk.where((step >= lo) & (step <= hi), step, mid)
    return z if dg is not None else lo / 2 + hi / 2


class CurveRule(ElementwiseRule):
    """An elementwise ``f`` whose bounding lines come from candidate points (module docstring).

    Subclasses give ``f``, ``df`` and, where they apply: ``breaks`` (break points), ``jumps``
    (one-sided limits at jump breaks), ``domain``, ``stationary`` (closed forms of
    ``f'(z) = a``), ``slope_range`` and ``closed_slopes``."""

    #: f is linear between its breaks: a neuron is decided when no break is inside its interval
    piecewise_linear = False
    #: absolute error of the implementation of f (added to every intercept)
    value_abs_error = 0.0
    #: bisection steps of the slope searches (asinh space)
    bisect_steps = BISECT

    # -- the function ------------------------------------------------------------------------------
    def f(self, bk, node, z):
        raise NotImplementedError

    def df(self, bk, node, z):
        raise NotImplementedError

    def d2f(self, bk, node, z):
        """``f''`` (or an approximation) for Newton steps in :meth:`stationary`; None: bisection."""
        return None

    def breaks(self, node) -> tuple:
        """Sorted break points: kinks, jumps and inflection points (f' is monotone in between)."""
        return ()

    def jumps(self, node) -> dict:
        """``{break: (left limit, right limit)}`` for the breaks where f jumps."""
        return {}

    def domain(self, node) -> tuple:
        """``(lo, hi)``: where f is defined (NaN outside)."""
        return (-INF, INF)

    def stationary(self, bk, node, a, l, u) -> list:
        """Points of ``[l, u]`` (clipped later) that include every ``z`` with ``f'(z) = a`` at which
        ``f(z) - a z`` may be extreme. Default: one bisection per piece between breaks."""
        edges = [-INF, *self.breaks(node), INF]
        out = []
        dg = None if self.d2f(bk, node, l) is None else (lambda z: self.d2f(bk, node, z))
        for p0, p1 in zip(edges[:-1], edges[1:]):
            lo, hi = clip(bk, l * 0 + p0, l, u), clip(bk, l * 0 + p1, l, u)
            out.append(solve_monotone(bk, lambda z: self.df(bk, node, z), a, lo, hi,
                                      iters=SOLVE if dg is None else NEWTON, dg=dg))
        return out

    def slope_range(self, bk, node, l, u):
        """``(lo, hi)`` arrays containing every secant slope of f on ``[l, u]``. Default: the
        extremes of f' at the ends and on both sides of each break (f' is monotone between)."""
        pts = [l, u]
        for b in self.breaks(node):
            d = 1e-9 * (1 + abs(b))
            pts += [clip(bk, l * 0 + (b - d), l, u), clip(bk, l * 0 + (b + d), l, u)]
        ds = [self.df(bk, node, p) for p in pts]
        lo, hi = ds[0], ds[0]
        for d in ds[1:]:
            lo, hi = bk.minimum(lo, d), bk.maximum(hi, d)
        return lo, hi

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        """Slopes in closed form for ``strategy`` (not ``constant``), or None: bisection."""
        return None

    # -- candidates and intercepts ------------------------------------------------------------------
    def candidates(self, bk, node, l, u, a, upper):
        """``(zs, vs)``: candidate points in ``[l, u]`` and the sup (upper) / inf (lower) of f
        next to each, for lines of slope ``a``."""
        pick = bk.maximum if upper else bk.minimum
        zs, vs = [l, u], [self.f(bk, node, l), self.f(bk, node, u)]
        jumps = self.jumps(node)
        for b in self.breaks(node):
            z = clip(bk, l * 0 + b, l, u)
            v = self.f(bk, node, z)
            if b in jumps:
                left, right = jumps[b]
                v = pick(v, bk.where((l < b) & (b <= u), l * 0 + left, v))
                v = pick(v, bk.where((l <= b) & (b < u), l * 0 + right, v))
            zs.append(z)
            vs.append(v)
        for z in self.stationary(bk, node, a, l, u):
            z = clip(bk, z, l, u)
            zs.append(z)
            vs.append(self.f(bk, node, z))
        return zs, vs

    def best(self, bk, node, l, u, a, upper):
        """``(b, z)``: ``sup (f(z) - a z)`` (upper) or ``inf`` (lower) over ``[l, u]`` and a point
        attaining it."""
        zs, vs = self.candidates(bk, node, l, u, a, upper)
        b, bz = vs[0] - a * zs[0], zs[0]
        for z, v in zip(zs[1:], vs[1:]):
            val = v - a * z
            better = (val > b) if upper else (val < b)
            b, bz = bk.where(better, val, b), bk.where(better, z, bz)
        return b, bz

    # -- slope choices ---------------------------------------------------------------------------------
    def choose_slope(self, bk, node, l, u, strategy, upper):
        zero = l * 0
        if strategy == "constant":
            return zero
        closed = self.closed_slopes(bk, node, l, u, strategy, upper)
        if closed is not None:
            return closed
        lo, hi = self.slope_range(bk, node, l, u)
        if strategy == "adaptive":
            m = l / 2 + u / 2
            # upper: the maximiser moves left as the slope grows; lower: the minimiser moves right
            s_lo, s_hi = _asinh(bk, lo), _asinh(bk, hi)
            for _ in range(self.bisect_steps):
                s = s_lo / 2 + s_hi / 2
                _, z = self.best(bk, node, l, u, _sinh(bk, s), upper)
                grow = (z > m) if upper else (z < m)
                s_lo, s_hi = bk.where(grow, s, s_lo), bk.where(grow, s_hi, s)
            return _sinh(bk, s_lo / 2 + s_hi / 2)
        # tight: anchored at the end point where f is extreme, else horizontal
        b0, _ = self.best(bk, node, l, u, zero, upper)
        tol = 1e-12 * (1 + bk.abs(b0))
        vl = self.best(bk, node, l, l, zero, upper)[0]
        vu = self.best(bk, node, u, u, zero, upper)[0]
        at_u = (vu >= b0 - tol) if upper else (vu <= b0 + tol)
        at_l = ((vl >= b0 - tol) if upper else (vl <= b0 + tol)) & ~at_u
        # at u the slope goes up from 0 (upper line) / down from 0 (lower line); mirrored at l
        reach_u = bk.maximum(hi, 0.0) if upper else bk.minimum(lo, 0.0)
        reach_l = bk.minimum(lo, 0.0) if upper else bk.maximum(hi, 0.0)
        far = bk.where(at_u, reach_u, bk.where(at_l, reach_l, zero))
        s_ok, s_far = zero, _asinh(bk, far)  # s_ok: a slope at which the end still attains the extreme
        end = bk.where(at_u, u, l)
        vend = bk.where(at_u, vu, vl)
        for _ in range(self.bisect_steps):
            s = s_ok / 2 + s_far / 2
            a = _sinh(bk, s)
            b, _ = self.best(bk, node, l, u, a, upper)
            keeps = (vend - a * end >= b - tol * (1 + bk.abs(a * end))) if upper else \
                (vend - a * end <= b + tol * (1 + bk.abs(a * end)))
            s_ok, s_far = bk.where(keeps, s, s_ok), bk.where(keeps, s_far, s)
        return bk.where(at_u | at_l, _sinh(bk, s_ok), zero)

    # -- the rules --------------------------------------------------------------------------------------
    def _prepared(self, bk, node, l, u):
        """float64 copies of ``l, u`` (ordered: bounds computed separately can cross by a
        rounding error) clipped to the domain, and a mask of the neurons whose lines are
        vacuous (infinite bounds, or an interval outside the domain)."""
        L, U = bk.asarray(l, dtype=np.float64), bk.asarray(u, dtype=np.float64)
        L, U = bk.minimum(L, U), bk.maximum(L, U)  # l > u by rounding (a point interval): its hull
        dlo, dhi = self.domain(node)
        L, U = bk.maximum(L, dlo), bk.minimum(U, dhi)
        bad = ~(bk.isfinite(L) & bk.isfinite(U)) | (L > U)
        L, U = bk.where(bad, L * 0, L), bk.where(bad, L * 0, U)
        return L, U, bad

    def _line(self, bk, node, L, U, a, upper, dtype, bad):
        """The optimal intercept for slope ``a`` (rounded to ``dtype`` first), rounded outwards."""
        a = bk.where(bk.isfinite(a) & ~bad, a, L * 0)
        a = bk.asarray(bk.asarray(a, dtype=dtype), dtype=np.float64)
        b, _ = self.best(bk, node, L, U, a, upper)
        zmax = bk.maximum(bk.abs(L), bk.abs(U))
        margin = 4 * eps_of(dtype) * (bk.abs(b) + bk.abs(a) * zmax) + self.value_abs_error
        b = b + margin if upper else b - margin
        b = bk.where(bad | (b != b), L * 0 + (INF if upper else -INF), b)
        return a, b

    def lines(self, bk, node, l, u, strategy):
        with np.errstate(all="ignore"):
            L, U, bad = self._prepared(bk, node, l, u)
            out = []
            for upper in (False, True):
                a = self.choose_slope(bk, node, L, U, strategy, upper)
                out += list(self._line(bk, node, L, U, a, upper, l.dtype, bad))
            return tuple(bk.asarray(v, dtype=l.dtype) for v in out)

    def interval(self, bk, node, *bounds):
        (l, u), = bounds
        return self._interval(bk, node, l, u)

    def _interval(self, bk, node, l, u):
        with np.errstate(all="ignore"):
            L, U, bad = self._prepared(bk, node, l, u)
            zero = L * 0
            lo = self._line(bk, node, L, U, zero, False, l.dtype, bad)[1]
            hi = self._line(bk, node, L, U, zero, True, l.dtype, bad)[1]
            return bk.asarray(lo, dtype=l.dtype), bk.asarray(hi, dtype=l.dtype)

    def forward(self, bk, node, x):
        with np.errstate(all="ignore"):  # NaN/inf outside the domain, as in onnxruntime
            return self.f(bk, node, x)

    def derivative(self, bk, node, x, y):
        return self.df(bk, node, x)

    def undecided(self, bk, node, lo, hi, index=0):
        if not self.piecewise_linear:
            return lo < hi
        mask = lo != lo  # all False
        jumps = self.jumps(node)
        for b in self.breaks(node):
            mask = mask | (((lo <= b) & (hi >= b) & (lo < hi)) if b in jumps else ((lo < b) & (hi > b)))
        return mask


# ---- closed forms ---------------------------------------------------------------------------------
def all_of(bk, mask) -> bool:
    return bool(np.all(bk.to_numpy(mask)))


def convex_slopes(rule, bk, node, l, u, strategy, upper, convex=True):
    """Slopes of a function convex (or, ``convex=False``, concave) on ``[l, u]``: the chord on
    the outer side; a tangent on the inner side, at the extreme point of f (``tight``) or at
    the midpoint (``adaptive``: least area)."""
    f = lambda z: rule.f(bk, node, z)  # noqa: E731
    outer = upper == convex  # the chord side
    if outer:
        w = u - l
        tiny = w <= 1e-12 * (1 + bk.abs(l) + bk.abs(u))
        chord = (f(u) - f(l)) / bk.where(tiny, w * 0 + 1, w)
        return bk.where(tiny, rule.df(bk, node, l / 2 + u / 2), chord)
    if strategy == "tight":
        t = rule.best(bk, node, l, u, l * 0, upper)[1]  # where f is extreme
    else:
        t = l / 2 + u / 2
    return rule.df(bk, node, t)


class BentCurve(CurveRule):
    """An increasing ``f``, convex (``convex = True``) or concave on its whole domain: closed-form
    lines (:func:`convex_slopes`: the chord on the outer side, a tangent on the inner one).
    Exp, Log, Sqrt."""

    monotone = True
    nonneg_slopes = True
    convex = True

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        return convex_slopes(self, bk, node, l, u, strategy, upper, convex=self.convex)
