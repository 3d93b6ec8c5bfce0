"""Exponential linear units: ``Elu(alpha)``, ``Selu(alpha, gamma)``, ``Celu(alpha)``.

One form: ``f(z) = s z`` for ``z > 0`` and ``A (exp(z / c) - 1)`` for ``z <= 0`` (Elu: ``s = 1,
A = alpha, c = 1``; Selu: ``s = gamma, A = gamma alpha, c = 1``; Celu: ``s = 1, A = c =
alpha``). The left piece is convex; at 0 the slope goes from ``A / c`` to ``s``, so f is
convex when ``A / c <= s`` (Elu with alpha <= 1, Celu) and the lines are chord and tangent in
closed form; otherwise (Selu) the kink at 0 is concave and the slopes come from the
bisections of :mod:`.curves`. Only ``A, c, s >= 0`` (monotone) variants are imported.
"""
from __future__ import annotations

from .base import Example, onnx_op
from .curves import CurveRule, convex_slopes
from .importing import fail
from .registry import register


class ExpLinear(CurveRule):
    monotone = True
    nonneg_slopes = True

    def _p(self, node):
        a = node.attrs
        return a["s"], a["A"], a["c"]

    def f(self, bk, node, z):
        s, A, c = self._p(node)
        return bk.where(z > 0, z * s, A * (bk.exp(bk.minimum(z, 0.0) / c) - 1.0))

    def df(self, bk, node, z):
        s, A, c = self._p(node)
        return bk.where(z > 0, z * 0 + s, (A / c) * bk.exp(bk.minimum(z, 0.0) / c))

    def breaks(self, node):
        return (0.0,)

    def stationary(self, bk, node, a, l, u):
        s, A, c = self._p(node)
        return [c * bk.log(bk.maximum(a * c / max(A, 1e-300), 1e-300))]

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        s, A, c = self._p(node)
        if A / c <= s:
            return convex_slopes(self, bk, node, l, u, strategy, upper, convex=True)
        return None

    def _add(self, ctx, node, label, s, A, c):
        if min(s, A) < 0 or c <= 0:
            fail(label, node.op_type, "only monotone variants (alpha >= 0, gamma >= 0) are supported")
        ctx.add(node.output[0], self.op, [ctx.computed(node.input[0])], attrs={"s": s, "A": A, "c": c}, source=label)


EXAMPLES = (Example(((2, 7),), low=-4.0, high=3.0), Example(((1, 2, 3, 3),), low=-1.0, high=1.0))


@register
class Elu(ExpLinear):
    op = "Elu"

    @onnx_op("Elu", since=6, examples=EXAMPLES + (Example(((2, 6),), {"alpha": 2.5}, low=-3.0, high=2.0),))
    def convert(self, ctx, node, attrs, label):
        alpha = float(attrs.get("alpha", 1.0))
        self._add(ctx, node, label, 1.0, alpha, 1.0)


@register
class Selu(ExpLinear):
    op = "Selu"

    @onnx_op("Selu", since=6, examples=EXAMPLES)
    def convert(self, ctx, node, attrs, label):
        alpha = float(attrs.get("alpha", 1.67326319217681884765625))
        gamma = float(attrs.get("gamma", 1.05070102214813232421875))
        self._add(ctx, node, label, gamma, gamma * alpha, 1.0)


@register
class Celu(ExpLinear):
    op = "Celu"

    @onnx_op("Celu", since=12, examples=EXAMPLES + (Example(((2, 6),), {"alpha": 0.5}, low=-3.0, high=2.0),))
    def convert(self, ctx, node, attrs, label):
        alpha = float(attrs.get("alpha", 1.0))
        self._add(ctx, node, label, 1.0, alpha, alpha)
