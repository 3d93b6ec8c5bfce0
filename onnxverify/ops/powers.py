"""Powers: ``Sqrt``, ``Reciprocal`` (also ``Div`` by a computed tensor, see
:mod:`.arithmetic`) and ``Pow`` with a constant exponent ``p`` (attr ``p``).

Curvature decides the lines (:mod:`.curves`): ``z^p`` is convex for even integer ``p`` and
for ``p > 1`` or ``p < 0`` on ``z > 0``, concave for ``0 < p < 1`` (Sqrt) and for odd ``p >= 3``
on ``z < 0``; ``1 / z`` is convex on ``z > 0`` and concave on ``z < 0``. Convex or concave on
the interval: chord on the outer side, tangent on the inner one (closed form); odd powers on
an interval around 0 (an inflection point) use the bisections. Poles: an interval that
touches 0 gives infinite bounds on the pole's side (``1/z`` and negative powers). A
fractional exponent is defined for ``z >= 0`` only (NaN below, left out).
"""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op, unary_converter
from .curves import INF, BentCurve, CurveRule, convex_slopes
from .importing import fail
from .registry import register


def _root(bk, c, q: int):
    """Real solutions ``z`` of ``z^q = c`` (integer ``q != 0``), as a list of arrays (NaN-free
    stand-ins where there is none: they are clipped into the interval anyway)."""
    mag = bk.power(bk.maximum(bk.abs(c), 1e-300), 1.0 / q)
    if q % 2:
        return [bk.where(c < 0, -mag, mag)]
    return [mag, -mag]


@register
class Sqrt(BentCurve):
    op = "Sqrt"
    convex = False

    def f(self, bk, node, z):
        return bk.sqrt(z)

    def df(self, bk, node, z):
        return 0.5 / bk.sqrt(z)

    def domain(self, node):
        return (0.0, INF)

    def stationary(self, bk, node, a, l, u):
        a = bk.maximum(a, 1e-150)
        return [0.25 / (a * a)]

    convert = unary_converter("Sqrt", since=1, examples=(
        Example(((2, 7),), low=1.0, high=4.0), Example(((1, 2, 3, 3),), low=2.0, high=9.0)))


@register
class Reciprocal(CurveRule):
    """``1 / z``: a pole at 0 (``+inf`` at 0 itself, as in IEEE arithmetic)."""

    op = "Reciprocal"

    def f(self, bk, node, z):
        return 1.0 / z

    def df(self, bk, node, z):
        return -1.0 / (z * z)

    def breaks(self, node):
        return (0.0,)

    def jumps(self, node):
        return {0.0: (-INF, INF)}

    def stationary(self, bk, node, a, l, u):
        r = 1.0 / bk.sqrt(bk.maximum(-a, 1e-300))
        return [r, -r]

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        pos = convex_slopes(self, bk, node, l, u, strategy, upper, convex=True)
        neg = convex_slopes(self, bk, node, l, u, strategy, upper, convex=False)
        return bk.where(l > 0, pos, bk.where(u < 0, neg, l * 0))

    convert = unary_converter("Reciprocal", since=1, examples=(Example(((2, 7),), low=0.5, high=3.0),
                                                               Example(((1, 2, 3, 3),), low=-4.0, high=-1.0)))


def _pow_examples():
    c = lambda p: np.array(p, dtype=np.float32)  # noqa: E731
    return (Example(((2, 7), c(2.0))), Example(((2, 7), c(3.0))), Example(((1, 2, 3, 3), c(0.5)), low=1.0, high=4.0),
            Example(((2, 5), c(-2.0)), low=0.5, high=3.0), Example(((2, 5), c(1.5)), low=1.0, high=4.0),
            Example(((2, 5), c(-3.0)), low=-3.0, high=-0.6), Example(((2, 5), c(4.0)), low=-1.5, high=1.5),
            Example((c(2.0), (2, 5))))


@register
class Pow(CurveRule):
    """``z ** p`` for a constant real ``p`` (attr ``p``; not 0 or 1, which import as affine)."""

    op = "Pow"

    def _p(self, node):
        p = float(node.attrs["p"])
        return (int(p), True) if p == int(p) else (p, False)

    def f(self, bk, node, z):
        return bk.power(z, self._p(node)[0])

    def df(self, bk, node, z):
        p, _ = self._p(node)
        return p * bk.power(z, p - 1)

    def domain(self, node):
        return (-INF, INF) if self._p(node)[1] else (0.0, INF)

    def breaks(self, node):
        p, integer = self._p(node)
        return (0.0,) if integer and (p < 0 or p % 2) else ()

    def jumps(self, node):
        p, integer = self._p(node)
        if integer and p < 0:
            return {0.0: (INF if p % 2 == 0 else -INF, INF)}
        return {}

    def stationary(self, bk, node, a, l, u):
        p, integer = self._p(node)
        c = a / p
        if integer:
            return _root(bk, c, p - 1)
        return [bk.power(bk.maximum(c, 1e-300), 1.0 / (p - 1))]

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        p, integer = self._p(node)
        if integer and p > 0 and p % 2:  # odd: concave below 0, convex above: bisection
            return None
        convex = convex_slopes(self, bk, node, l, u, strategy, upper, convex=True)
        if not integer:
            return convex if (p > 1 or p < 0) else convex_slopes(self, bk, node, l, u, strategy, upper, convex=False)
        if p % 2 == 0 and p > 0:
            return convex
        concave = convex_slopes(self, bk, node, l, u, strategy, upper, convex=False)
        # negative: convex above 0, for z < 0 convex (even p) or concave (odd p); 0 only with a pole
        below = convex if p % 2 == 0 else concave
        return bk.where(l > 0, convex, bk.where(u < 0, below, l * 0))

    # -- import --------------------------------------------------------------------------------------
    @onnx_op("Pow", since=1, examples=_pow_examples())
    def convert(self, ctx, node, attrs, label):
        base, expo = node.input
        if not ctx.is_const(expo):
            if not ctx.is_const(base):
                fail(label, "Pow", "a computed base to a computed exponent is not supported")
            c = np.asarray(ctx.const(base), dtype=np.float64)
            if c.size != 1 or not float(c.reshape(-1)[0]) > 0:
                fail(label, "Pow", f"a constant base must be one positive number, got shape {c.shape}")
            # c ** x = exp(x log c)
            inner = ctx.add(node.output[0] + "/log_base", "Affine", [ctx.computed(expo)],
                            {"scale": np.array(np.log(c.reshape(-1)[0]), np.float32), "shift": np.array(0.0, np.float32)}, source=label)
            ctx.add(node.output[0], "Exp", [inner], source=label)
            return
        e = np.asarray(ctx.const(expo), dtype=np.float64)
        if e.size == 0 or not np.all(e == e.reshape(-1)[0]):
            fail(label, "Pow", f"the exponent must be one constant number, got shape {e.shape}")
        p = float(e.reshape(-1)[0])
        x = ctx.computed(base)
        if not np.isfinite(p):
            fail(label, "Pow", f"exponent {p} is not finite")
        if p == 1.0:
            ctx.add(node.output[0], "Affine", [x], {"scale": np.array(1.0, np.float32), "shift": np.array(0.0, np.float32)}, source=label)
        elif p == 0.0:
            ctx.add(node.output[0], "Affine", [x], {"scale": np.array(0.0, np.float32), "shift": np.array(1.0, np.float32)}, source=label)
        elif p == -1.0:
            ctx.add(node.output[0], "Reciprocal", [x], source=label)
        else:
            ctx.add(node.output[0], "Pow", [x], attrs={"p": p}, source=label)
