"""``Exp`` (convex, increasing) and ``Log`` (concave, increasing on ``(0, inf)``).

Bounding lines (:mod:`.curves`): the chord on the outer side (above a convex curve, below a
concave one); on the inner side a tangent, at the extreme end (``tight``: at ``l`` for Exp's
lower line, at ``u`` for Log's upper line) or at the midpoint (``adaptive``: least area).
Log is ``-inf`` at 0 and NaN below: inputs ``<= 0`` give a lower bound of ``-inf``, negative
ones are left out (module docstring of :mod:`.curves`).
"""
from __future__ import annotations

from .base import Example, onnx_op
from .curves import INF, CurveRule, convex_slopes
from .registry import register


@register
class Exp(CurveRule):
    op = "Exp"
    monotone = True
    nonneg_slopes = True

    def f(self, bk, node, z):
        return bk.exp(z)

    def df(self, bk, node, z):
        return bk.exp(z)

    def stationary(self, bk, node, a, l, u):
        return [bk.log(bk.maximum(a, 1e-300))]

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        return convex_slopes(self, bk, node, l, u, strategy, upper, convex=True)

    @onnx_op("Exp", since=1, examples=(Example(((2, 7),), low=-3.0, high=3.0), Example(((1, 2, 3, 3),))))
    def convert(self, ctx, node, attrs, label):
        ctx.add(node.output[0], "Exp", [ctx.computed(node.input[0])], source=label)


@register
class Log(CurveRule):
    op = "Log"
    monotone = True
    nonneg_slopes = True

    def f(self, bk, node, z):
        return bk.log(z)

    def df(self, bk, node, z):
        return 1.0 / z

    def domain(self, node):
        return (0.0, INF)

    def stationary(self, bk, node, a, l, u):
        return [1.0 / bk.maximum(a, 1e-300)]

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        return convex_slopes(self, bk, node, l, u, strategy, upper, convex=False)

    @onnx_op("Log", since=1, examples=(Example(((2, 7),), low=1.0, high=4.0), Example(((1, 2, 3, 3),), low=2.0, high=12.0)))
    def convert(self, ctx, node, attrs, label):
        ctx.add(node.output[0], "Log", [ctx.computed(node.input[0])], source=label)
