"""``LayerNormalization`` (opset 17) by composition, and the affine helpers it needs.

``y = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias`` over the axes from ``axis`` on.
The converter emits ``Center`` (``c = x - mean(x)``, affine), ``Pow`` 2, ``AxisSum``
(``v = mean(c^2) + eps``, affine), ``Pow`` -1/2 (convex and decreasing on ``v > 0``), ``Mul``
(``c * v^-1/2``: McCormick, :mod:`.products`) and ``Affine`` (scale, bias). The older
exporters' pattern ``ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div`` imports to the
same kind of chain through the ordinary converters (``Sub`` with a broadcast operand goes
through ``Broadcast``, :mod:`.tile`; ``Div`` by a computed tensor is ``Mul`` by its ``Reciprocal``),
so no fusion pass is needed: both forms are bounded by the same sound rules. The opset-17
form's product carries the proven bound ``|y_i| <= sqrt(D - 1)`` of a normalised value
(``c_i^2 <= (D - 1) var``, Cauchy-Schwarz on ``c_i = -sum_{j != i} c_j``), which clips the
interval where ``var`` may be near 0 (there ``1 / sqrt(var + eps)`` is huge). Measured
(benchmarks/op_widths.py): IBP 3.26 (op) vs 5.43 (pattern), CROWN 0.661 on both; the tight
strategy is looser on the op (0.80 vs 0.72) because it keeps a McCormick plane only when
the plane is exact at the clipped extreme (what Theorem 2 needs).

Shapes: ``Center`` keeps ``node.shape``.
"""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .generic import AffineRule
from .importing import fail
from .registry import register
from .softmax import add_axis_sum


@register
class Center(AffineRule):
    """``x - mean(x)`` over the last axis: ``L = I - 11^T / n`` (symmetric)."""

    op = "Center"
    mixes = True

    def apply(self, bk, node, x, bias=True):
        return x - bk.sum(x, axis=-1, keepdims=True) / x.shape[-1]

    def apply_abs(self, bk, node, x):
        n = x.shape[-1]  # |L| = (1 - 2/n) I + 11^T / n
        return x * (1.0 - 2.0 / n) + bk.sum(x, axis=-1, keepdims=True) / n

    def adjoint(self, bk, node, A, in_shapes):
        return [self.apply(bk, node, A)]

    # -- import ----------------------------------------------------------------------------------------
    @onnx_op("LayerNormalization", since=17, examples=(
        # inputs in [0.5, 2]: the VJP contract test samples every inner node's inputs there (rstd's too)
        Example(((2, 3, 6), np.linspace(0.5, 1.5, 6).astype(np.float32), np.linspace(-0.2, 0.3, 6).astype(np.float32)),
                low=0.5),
        Example(((1, 2, 3, 4), np.full((3, 4), 0.8, np.float32)), {"axis": -2, "epsilon": 1e-3}, low=0.5),
        Example(((2, 5), np.ones(5, np.float32)), {"axis": 1}, low=0.5, high=1.0),
    ))
    def convert(self, ctx, node, attrs, label):
        x = node.input[0]
        shape = tuple(ctx.shape_of(x))
        rank = len(shape) + 1
        axis = int(attrs.get("axis", -1))
        axis = axis + rank if axis < 0 else axis
        if not 1 <= axis < rank:
            fail(label, "LayerNormalization", f"axis={attrs.get('axis', -1)} normalises over the batch axis")
        if any(o for o in node.output[1:]):
            fail(label, "LayerNormalization", "the Mean / InvStdDev outputs are not supported")
        for name in node.input[1:3]:
            if name and not ctx.is_const(name):
                fail(label, "LayerNormalization", f"{name} (scale / bias) must be a constant")
        eps = float(attrs.get("epsilon", 1e-5))
        norm = shape[axis - 1:]
        D = int(np.prod(norm, dtype=np.int64))
        out = node.output[0]
        src = ctx.computed(x)
        flat = shape[: axis - 1] + (D,)
        if flat != shape:
            src = ctx.add(out + "/flat", "Reshape", [src], source=label, shape=flat)
        c = ctx.add(out + "/centered", "Center", [src], source=label)
        sq = ctx.add(out + "/square", "Pow", [c], attrs={"p": 2.0}, source=label)
        v = add_axis_sum(ctx, out + "/var", sq, label, scale=1.0 / D, shift=eps, keepdims=True)
        r = ctx.add(out + "/rstd", "Pow", [v], attrs={"p": -0.5}, source=label)
        # |c_i| <= sqrt((D - 1) var) for a centred vector (Cauchy-Schwarz on c_i = -sum_{j != i} c_j),
        # so |c_i / sqrt(var + eps)| <= sqrt(D - 1): an interval IBP cannot see (widened for rounding)
        bound = float(np.sqrt(max(D - 1, 0)) * (1 + 1e-5) + 1e-6)
        y = ctx.add(out + "/normed", "Mul", [c, r], attrs={"bound": bound}, source=label)
        if flat != shape:
            y = ctx.add(out + "/unflat", "Reshape", [y], source=label, shape=shape)
        scale = np.broadcast_to(np.asarray(ctx.const(node.input[1]), np.float32), norm)
        bias = (np.broadcast_to(np.asarray(ctx.const(node.input[2]), np.float32), norm)
                if len(node.input) > 2 and node.input[2] else np.zeros(norm, np.float32))
        ctx.add(out, "Affine", [y], {"scale": np.ascontiguousarray(scale), "shift": np.ascontiguousarray(bias)},
                source=label)
