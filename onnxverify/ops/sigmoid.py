"""S-shaped activations: ``Sigmoid`` and ``Tanh`` (convex for ``z < 0``, concave for ``z > 0``).

Bounding lines as in CROWN: on a concave piece the upper line is a tangent and the lower
line the chord; on a mixed interval the upper line is the tangent at the point ``d >= 0``
whose tangent passes through ``(l, f(l))`` (found by bisection), or the chord when none
exists. Lower lines follow by symmetry: ``f(z) = 2c - f(-z)`` with ``c = f(0)``.
"""
from __future__ import annotations

from .base import Example, onnx_op
from .generic import ElementwiseRule
from .lines import chord, constant_lines
from .registry import register


def s_upper_line(bk, f, df, l, u, iters=30):
    """Upper line of an S-shaped f on [l, u]."""
    cs, cb = chord(bk, f, l, u)
    # concave part only (l >= 0): tangent at the midpoint
    m = (l + u) / 2
    ts, tb = df(m), f(m) - df(m) * m
    # mixed: tangent at d in [0, u] that passes through (l, f(l)); chord if none exists
    tangent_at = lambda d: f(d) + df(d) * (l - d)  # noqa: E731  value at l of the tangent at d
    use_chord = tangent_at(bk.maximum(u, 0.0)) <= f(l)
    lo, hi = l * 0, bk.maximum(u, 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = tangent_at(mid) >= f(l)
        hi = bk.where(above, mid, hi)
        lo = bk.where(above, lo, mid)
    d = hi  # tangent_at(hi) >= f(l): the line is >= f at l
    ms, mb = df(d), f(d) - df(d) * d
    aU = bk.where(u <= 0, cs, bk.where(l >= 0, ts, bk.where(use_chord, cs, ms)))
    bU = bk.where(u <= 0, cb, bk.where(l >= 0, tb, bk.where(use_chord, cb, mb)))
    return aU, bU


class SShapedRule(ElementwiseRule):
    """An S-shaped ``f`` with centre value ``centre = f(0)`` and ``f(z) = 2 centre - f(-z)``."""

    monotone = True
    nonneg_slopes = True
    centre = 0.0

    def f(self, bk, z):
        raise NotImplementedError

    def df(self, bk, z):
        raise NotImplementedError

    def forward(self, bk, node, x):
        return self.f(bk, x)

    def derivative(self, bk, node, x, y):
        return self.df(bk, x)

    def lines(self, bk, node, l, u, strategy):
        f, df = (lambda z: self.f(bk, z)), (lambda z: self.df(bk, z))
        if strategy == "constant":
            return constant_lines(bk, f, l, u)
        aU, bU = s_upper_line(bk, f, df, l, u)
        # an upper line (a, b) on [-u, -l] gives the lower line a z + 2c - b on [l, u]
        aLm, bLm = s_upper_line(bk, f, df, -u, -l)
        return aLm, 2 * self.centre - bLm, aU, bU


EXAMPLES = (Example(((2, 9),), low=-6.0, high=6.0), Example(((1, 2, 3, 3),), low=-0.5, high=0.5))


@register
class Sigmoid(SShapedRule):
    op = "Sigmoid"
    centre = 0.5

    def f(self, bk, z):
        return bk.sigmoid(z)

    def df(self, bk, z):
        s = bk.sigmoid(z)
        return s * (1 - s)

    @onnx_op("Sigmoid", since=1, examples=EXAMPLES)
    def convert(self, ctx, node, attrs, label):
        ctx.add(node.output[0], "Sigmoid", [ctx.computed(node.input[0])], source=label)


@register
class Tanh(SShapedRule):
    op = "Tanh"
    centre = 0.0

    def f(self, bk, z):
        return bk.tanh(z)

    def df(self, bk, z):
        return 1 - bk.tanh(z) ** 2

    @onnx_op("Tanh", since=1, examples=EXAMPLES)
    def convert(self, ctx, node, attrs, label):
        ctx.add(node.output[0], "Tanh", [ctx.computed(node.input[0])], source=label)
