"""``Softplus``: ``f(z) = log(1 + exp(z))``, convex and increasing, ``f' = sigmoid``.

Bounding lines on ``[l, u]``: the upper line is the chord (above a convex function); the
lower line is a tangent (below it): at ``l`` for ``tight`` (it dominates the constant line
``f(l)`` on the whole interval, so ``tight`` is never looser than ``constant``), at the
midpoint for ``adaptive`` (smaller area between line and curve).
"""
from __future__ import annotations

from .base import Example, unary_converter
from .generic import ElementwiseRule
from .lines import chord, constant_lines
from .registry import register


def softplus(bk, z):
    """``max(z, 0) + log(1 + exp(-|z|))``: no overflow for large ``|z|``."""
    return bk.relu(z) + bk.log(1.0 + bk.exp(-bk.abs(z)))


@register
class Softplus(ElementwiseRule):
    op = "Softplus"
    monotone = True
    nonneg_slopes = True

    def forward(self, bk, node, x):
        return softplus(bk, x)

    def derivative(self, bk, node, x, y):
        return bk.sigmoid(x)

    def lines(self, bk, node, l, u, strategy):
        f = lambda z: softplus(bk, z)  # noqa: E731
        if strategy == "constant":
            return constant_lines(bk, f, l, u)
        aU, bU = chord(bk, f, l, u)
        t = l if strategy == "tight" else (l + u) / 2
        aL = bk.sigmoid(t)
        return aL, f(t) - aL * t, aU, bU

    convert = unary_converter("Softplus", since=1, examples=(
        Example(((2, 7),), low=-8.0, high=8.0), Example(((1, 2, 3, 3),))))
