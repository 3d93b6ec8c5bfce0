"""Piecewise-linear elementwise ops: ``Abs``, ``Clip`` (also Relu6 and HardTanh, which
exporters write as Clip), ``HardSigmoid``; ``HardSwish`` (piecewise quadratic); and ``Neg``
(affine).

Lines come from :mod:`.curves`: between its break points such an f is linear, so
``f(z) - a z`` is extreme at ``l``, ``u`` or a break point (HardSwish adds the stationary
point of its quadratic piece). A neuron is decided (linear on its interval) when no break
point lies strictly inside. Abs is convex: the chord above, below it the tangent line at
the minimiser (``tight``: the horizontal line 0 around 0) or the side of the larger half
(``adaptive``: slope ``sign(l + u)``, as CROWN does for ReLU).
"""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op, unary_converter
from .curves import INF, CurveRule, convex_slopes
from .generic import AffineRule
from .importing import fail
from .registry import register


@register
class Abs(CurveRule):
    op = "Abs"
    piecewise_linear = True

    def f(self, bk, node, z):
        return bk.abs(z)

    def df(self, bk, node, z):
        return bk.sign(z)

    def breaks(self, node):
        return (0.0,)

    def stationary(self, bk, node, a, l, u):
        return []

    def closed_slopes(self, bk, node, l, u, strategy, upper):
        return convex_slopes(self, bk, node, l, u, strategy, upper, convex=True)

    convert = unary_converter("Abs", since=1, examples=(
        Example(((2, 7),)), Example(((1, 2, 3, 3),), low=-0.5, high=1.5)))


@register
class Neg(AffineRule):
    op = "Neg"
    windowed = True

    def apply(self, bk, node, x, bias=True):
        return -x

    def apply_abs(self, bk, node, x):
        return x

    def adjoint(self, bk, node, A, in_shapes):
        return [-A]

    def adjoint_window(self, bk, node, A, win, in_shapes):
        return [(-A, win)]

    convert = unary_converter("Neg", since=1, examples=(Example(((2, 7),)), Example(((1, 2, 3, 3),))))


def _bound(ctx, name, default, label, op):
    if name == "" or name is None:
        return default
    if not ctx.is_const(name):
        fail(label, op, f"the bound {name} must be a constant")
    v = np.asarray(ctx.const(name), dtype=np.float64)
    if v.size != 1:
        fail(label, op, f"the bound {name} must be one number, got shape {v.shape}")
    return float(v.reshape(-1)[0])


@register
class Clip(CurveRule):
    """attrs ``lo``, ``hi`` (floats, possibly infinite): ``min(max(z, lo), hi)``."""

    op = "Clip"
    monotone = True
    nonneg_slopes = True
    piecewise_linear = True

    def f(self, bk, node, z):
        return bk.minimum(bk.maximum(z, node.attrs["lo"]), node.attrs["hi"])

    def df(self, bk, node, z):
        inside = (z > node.attrs["lo"]) & (z < node.attrs["hi"])
        return bk.where(inside, z * 0 + 1.0, z * 0)

    def breaks(self, node):
        return tuple(sorted(b for b in (node.attrs["lo"], node.attrs["hi"]) if np.isfinite(b)))

    def stationary(self, bk, node, a, l, u):
        return []

    @onnx_op("Clip", since=1, examples=(Example(((2, 7),), {"min": -0.5, "max": 1.0}), Example(((2, 5),), {"min": 0.0})))
    def convert_attrs(self, ctx, node, attrs, label):
        lo, hi = float(attrs.get("min", -INF)), float(attrs.get("max", INF))
        lo = -INF if lo <= -3.4e38 else lo  # the defaults are float32's lowest / max
        hi = INF if hi >= 3.4e38 else hi
        ctx.add(node.output[0], "Clip", [ctx.computed(node.input[0])], attrs={"lo": lo, "hi": hi}, source=label)

    @onnx_op("Clip", since=11, examples=(
        Example(((2, 7), np.array(0.0, np.float32), np.array(6.0, np.float32)), low=-3.0, high=9.0),  # Relu6
        Example(((1, 2, 3, 3), np.array(-1.0, np.float32), np.array(1.0, np.float32))),  # HardTanh
        Example(((2, 5), None, np.array(0.5, np.float32))),
    ))
    def convert_inputs(self, ctx, node, attrs, label):
        ins = list(node.input) + ["", ""]
        lo, hi = _bound(ctx, ins[1], -INF, label, "Clip"), _bound(ctx, ins[2], INF, label, "Clip")
        ctx.add(node.output[0], "Clip", [ctx.computed(node.input[0])], attrs={"lo": lo, "hi": hi}, source=label)


@register
class HardSigmoid(CurveRule):
    """attrs ``alpha >= 0``, ``beta``: ``max(0, min(1, alpha z + beta))``."""

    op = "HardSigmoid"
    monotone = True
    nonneg_slopes = True
    piecewise_linear = True

    def f(self, bk, node, z):
        a = node.attrs
        return bk.minimum(bk.maximum(z * a["alpha"] + a["beta"], 0.0), 1.0)

    def df(self, bk, node, z):
        a = node.attrs
        t = z * a["alpha"] + a["beta"]
        return bk.where((t > 0) & (t < 1), z * 0 + a["alpha"], z * 0)

    def breaks(self, node):
        a = node.attrs
        if a["alpha"] == 0:
            return ()
        return tuple(sorted((-a["beta"] / a["alpha"], (1 - a["beta"]) / a["alpha"])))

    def stationary(self, bk, node, a, l, u):
        return []

    @onnx_op("HardSigmoid", since=6, examples=(Example(((2, 7),), low=-4.0, high=4.0),
                                               Example(((1, 2, 3, 3),), {"alpha": 0.5, "beta": 0.2})))
    def convert(self, ctx, node, attrs, label):
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        if alpha < 0:
            fail(label, "HardSigmoid", f"alpha={alpha} < 0 (a decreasing HardSigmoid) is not supported")
        ctx.add(node.output[0], "HardSigmoid", [ctx.computed(node.input[0])], attrs={"alpha": alpha, "beta": beta},
                source=label)


@register
class HardSwish(CurveRule):
    """``z * HardSigmoid(z; 1/6, 1/2)``: 0 below -3, ``z (z + 3) / 6`` on ``[-3, 3]``, z above 3."""

    op = "HardSwish"

    def f(self, bk, node, z):
        return z * bk.minimum(bk.maximum(z / 6 + 0.5, 0.0), 1.0)

    def df(self, bk, node, z):
        mid = (2 * z + 3) / 6
        return bk.where(z <= -3, z * 0, bk.where(z >= 3, z * 0 + 1.0, mid))

    def breaks(self, node):
        return (-3.0, 3.0)

    def stationary(self, bk, node, a, l, u):
        return [3 * a - 1.5]  # (2 z + 3) / 6 = a on the quadratic piece

    convert = unary_converter("HardSwish", since=14, examples=(
        Example(((2, 7),), low=-5.0, high=5.0), Example(((1, 2, 3, 3),))))
