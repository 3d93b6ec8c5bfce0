"""Step functions: ``Sign``, ``Floor``, ``Ceil``, ``Round`` (half to even).

Their bounding lines jump over the steps (:mod:`.curves`): the candidate values at a jump are
its one-sided limits, so a line is above (below) the whole staircase, limits included.

* Sign: one jump at 0 (``sign(0) = 0``). The adaptive upper line on ``l < 0 < u`` is the
  steepest one through ``(l, -1)`` and ``(0+, 1)`` when ``u < -l``, else the constant 1
  (least area); the lower line mirrors it.
* Floor: slopes in ``[0, 1]`` only, for which ``floor(z) - a z`` is largest at ``l`` or at
  the largest integer ``<= u`` and smallest at ``u`` or just below the first integer above
  ``l`` (limit value ``floor(l)``): ``x - 1 < floor(x) <= x`` is the slope-1 pair. Ceil is
  ``-floor(-z)``; Round lies between ``ceil(z - 1/2)`` and ``floor(z + 1/2)``.

A neuron is decided when its interval holds no step (``f(l) == f(u)``).
"""
from __future__ import annotations

from .base import Example, unary_converter
from .curves import CurveRule
from .registry import register


class StepRule(CurveRule):
    monotone = True
    nonneg_slopes = True

    def df(self, bk, node, z):
        return z * 0

    def stationary(self, bk, node, a, l, u):
        return []

    def undecided(self, bk, node, lo, hi, index=0):
        return self.f(bk, node, lo) != self.f(bk, node, hi)


@register
class Sign(StepRule):
    op = "Sign"

    def f(self, bk, node, z):
        return bk.sign(z)

    def breaks(self, node):
        return (0.0,)

    def jumps(self, node):
        return {0.0: (-1.0, 1.0)}

    def undecided(self, bk, node, lo, hi, index=0):
        return (lo < hi) & (lo <= 0) & (hi >= 0)

    def slope_range(self, bk, node, l, u):
        # supporting slopes of the envelopes: up to 2 / (distance from 0 to the nearer end)
        w = bk.where(l < 0, -l, u)
        w = bk.where((u > 0) & (u < w), u, w)
        return l * 0, 2.0 / bk.maximum(w, 1e-300)

    convert = unary_converter("Sign", since=9, examples=(
        Example(((2, 7),)), Example(((1, 2, 3, 3),), low=-0.3, high=1.0)))


def _floor_candidates(bk, l, u, upper):
    """Candidates of ``floor`` on ``[l, u]`` for slopes in ``[0, 1]`` (module docstring)."""
    fl, fu = bk.floor(l), bk.floor(u)
    if upper:
        return [l, u, bk.maximum(fu, l)], [fl, fu, fu]
    return [l, u, bk.minimum(fl + 1, u)], [fl, fu, fl]


class Staircase(StepRule):
    """Lines with slopes in ``[0, 1]`` from the floor staircase (``shift``, ``mirror``)."""

    def slope_range(self, bk, node, l, u):
        return l * 0, l * 0 + 1.0

    def choose_slope(self, bk, node, l, u, strategy, upper):
        a = super().choose_slope(bk, node, l, u, strategy, upper)
        return bk.minimum(bk.maximum(a, 0.0), 1.0)

    def floor_candidates(self, bk, l, u, upper):
        raise NotImplementedError


@register
class Floor(Staircase):
    op = "Floor"

    def f(self, bk, node, z):
        return bk.floor(z)

    def candidates(self, bk, node, l, u, a, upper):
        return _floor_candidates(bk, l, u, upper)

    convert = unary_converter("Floor", since=1, examples=(
        Example(((2, 7),), low=-3.0, high=3.0), Example(((1, 2, 3, 3),))))


@register
class Ceil(Staircase):
    op = "Ceil"

    def f(self, bk, node, z):
        return bk.ceil(z)

    def candidates(self, bk, node, l, u, a, upper):
        # ceil(z) = -floor(-z): sup of ceil - a z is -(inf of floor(w) - a w) at w = -z
        zs, vs = _floor_candidates(bk, -u, -l, not upper)
        return [-z for z in zs], [-v for v in vs]

    convert = unary_converter("Ceil", since=1, examples=(
        Example(((2, 7),), low=-3.0, high=3.0), Example(((1, 2, 3, 3),))))


@register
class Round(Staircase):
    op = "Round"

    def f(self, bk, node, z):
        return bk.round(z)

    def candidates(self, bk, node, l, u, a, upper):
        if upper:  # round(z) <= floor(z + 1/2)
            zs, vs = _floor_candidates(bk, l + 0.5, u + 0.5, True)
            return [z - 0.5 for z in zs], vs
        zs, vs = _floor_candidates(bk, 0.5 - u, 0.5 - l, True)  # round(z) >= ceil(z - 1/2) = -floor(1/2 - z)
        return [0.5 - z for z in zs], [-v for v in vs]

    convert = unary_converter("Round", since=11, examples=(
        Example(((2, 7),), low=-3.0, high=3.0), Example(((1, 2, 3, 3),))))
