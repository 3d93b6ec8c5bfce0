"""``Erf`` (the form torch exports GELU in: ``x * 0.5 * (1 + erf(x / sqrt 2))``, a product
that :mod:`.products` bounds) and ``Gelu`` (opset 20; ``approximate`` = ``none`` or ``tanh``).

Erf is S-shaped (convex below 0, concave above): closed-form chord/tangent lines on either
side, bisections (:mod:`.curves`) across 0, with stationary points
``z = +-sqrt(-log(a sqrt(pi) / 2))``. GELU ``z Phi(z)`` has inflection points at
``+-sqrt 2`` (``f'' = phi(z) (2 - z^2)``; the tanh form's are found numerically once): its
minimum is near ``-0.75``, so it is neither monotone nor convex; stationary points of each
piece by safeguarded Newton steps.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Example, onnx_op, unary_converter
from .curves import CurveRule, all_of, convex_slopes, solve_monotone
from .importing import fail, text
from .registry import register

SQRT2 = math.sqrt(2.0)
TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
K_TANH = math.sqrt(2.0 / math.pi)
C_TANH = 0.044715


@register
class Erf(CurveRule):
    op = "Erf"
    monotone = True
    nonneg_slopes = True
    value_abs_error = 2e-7  # the NumPy backend's erf (Numerical Recipes erfcc: error < 1.2e-7)

    def f(self, bk, node, z):
        return bk.erf(z)

    def df(self, bk, node, z):
        return TWO_OVER_SQRT_PI * bk.exp(-z * z)

    def d2f(self, bk, node, z):
        return -2 * z * self.df(bk, node, z)

    def breaks(self, node):
        return (0.0,)

    def stationary(self, bk, node, a, l, u):
        r = bk.sqrt(bk.maximum(-bk.log(bk.maximum(a / TWO_OVER_SQRT_PI, 1e-300)), 0.0))
        return [r, -r]

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        if not all_of(bk, (u <= 0) | (l >= 0)):
            return None
        return bk.where(u <= 0, convex_slopes(self, bk, node, l, u, strategy, upper, convex=True),
                        convex_slopes(self, bk, node, l, u, strategy, upper, convex=False))

    convert = unary_converter("Erf", since=9, examples=(
        Example(((2, 7),), low=-3.0, high=3.0), Example(((1, 2, 3, 3),))))


def _gelu_tanh(xp_tanh, z):
    return 0.5 * z * (1.0 + xp_tanh(K_TANH * (z + C_TANH * z * z * z)))


def _gelu_tanh_d(xp_tanh, z):
    t = xp_tanh(K_TANH * (z + C_TANH * z * z * z))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * K_TANH * (1.0 + 3 * C_TANH * z * z)


def _tanh_inflection() -> float:
    """The positive root of f'' for the tanh form (f'' is even), by bisection on f'."""
    from ..backend import NUMPY as bk

    h = 1e-5
    d2 = lambda z: (_gelu_tanh_d(np.tanh, z + h) - _gelu_tanh_d(np.tanh, z - h)) / (2 * h)  # noqa: E731
    z = solve_monotone(bk, d2, 0.0, np.array(1.0), np.array(2.0), iters=60)
    return float(z)


_INFLECTION = {"none": SQRT2}


@register
class Gelu(CurveRule):
    """attrs ``approximate``: ``"none"`` (``z Phi(z)``) or ``"tanh"``."""

    op = "Gelu"
    value_abs_error = 1e-7  # 0.5 z erf-error(z / sqrt 2) < 1.2e-7 * max 0.5 z erfc(z / sqrt 2)
    bisect_steps = 16  # slope precision ~1e-5 relative: enough for tightness (soundness never depends on it)

    def f(self, bk, node, z):
        if node.attrs["approximate"] == "tanh":
            return _gelu_tanh(bk.tanh, z)
        return 0.5 * z * (1.0 + bk.erf(z / SQRT2))

    def df(self, bk, node, z):
        if node.attrs["approximate"] == "tanh":
            return _gelu_tanh_d(bk.tanh, z)
        return 0.5 * (1.0 + bk.erf(z / SQRT2)) + z * bk.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    def d2f(self, bk, node, z):
        if node.attrs["approximate"] == "tanh":
            h = 1e-6 * (1 + bk.abs(z))
            return (self.df(bk, node, z + h) - self.df(bk, node, z - h)) / (2 * h)
        return bk.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (2.0 - z * z)

    def breaks(self, node):
        key = node.attrs["approximate"]
        if key not in _INFLECTION:
            _INFLECTION[key] = _tanh_inflection()
        z = _INFLECTION[key]
        return (-z, z)

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        z = self.breaks(node)[1]
        if not all_of(bk, (l >= -z) & (u <= z)):
            return None
        return convex_slopes(self, bk, node, l, u, strategy, upper, convex=True)

    @onnx_op("Gelu", since=20, examples=(Example(((2, 7),), low=-4.0, high=3.0, opsets=(20,)),
                                         Example(((1, 2, 3, 3),), opsets=(21,)),
                                         Example(((2, 6),), {"approximate": "tanh"}, low=-4.0, high=3.0, opsets=(20,))))
    def convert(self, ctx, node, attrs, label):
        approx = text(attrs.get("approximate", "none"))
        if approx not in ("none", "tanh"):
            fail(label, "Gelu", f"approximate={approx!r} is not one of 'none', 'tanh'")
        ctx.add(node.output[0], "Gelu", [ctx.computed(node.input[0])], attrs={"approximate": approx}, source=label)
