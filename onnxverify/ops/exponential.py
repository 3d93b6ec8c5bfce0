"""``Exp`` (convex, increasing) and ``Log`` (concave, increasing on ``(0, inf)``).

Bounding lines (:mod:`.curves`): the chord on the outer side (above a convex curve, below a
concave one); on the inner side a tangent, at the extreme end (``tight``: at ``l`` for Exp's
lower line, at ``u`` for Log's upper line) or at the midpoint (``adaptive``: least area).
Log is ``-inf`` at 0 and NaN below: inputs ``<= 0`` give a lower bound of ``-inf``, negative
ones are left out (module docstring of :mod:`.curves`).
"""
from __future__ import annotations

from .base import Example, unary_converter
from .curves import INF, BentCurve
from .registry import register


@register
class Exp(BentCurve):
    op = "Exp"

    def f(self, bk, node, z):
        return bk.exp(z)

    def df(self, bk, node, z):
        return bk.exp(z)

    def stationary(self, bk, node, a, l, u):
        return [bk.log(bk.maximum(a, 1e-300))]

    convert = unary_converter("Exp", since=1, examples=(
        Example(((2, 7),), low=-3.0, high=3.0), Example(((1, 2, 3, 3),))))


@register
class Log(BentCurve):
    op = "Log"
    convex = False

    def f(self, bk, node, z):
        return bk.log(z)

    def df(self, bk, node, z):
        return 1.0 / z

    def domain(self, node):
        return (0.0, INF)

    def stationary(self, bk, node, a, l, u):
        return [1.0 / bk.maximum(a, 1e-300)]

    convert = unary_converter("Log", since=1, examples=(
        Example(((2, 7),), low=1.0, high=4.0), Example(((1, 2, 3, 3),), low=2.0, high=12.0)))
