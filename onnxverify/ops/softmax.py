"""``Softmax`` and ``LogSoftmax`` on any axis, by composition of sound rules.

``softmax(x)_i = 1 / sum_j exp(x_j - x_i)`` and ``logsoftmax(x)_i = -log sum_j exp(x_j - x_i)``.
The converters emit ``PairDiff`` (``d_ij = x_j - x_i``, affine), ``Exp``, ``AxisSum`` (sum
over the last axis, affine) and ``Reciprocal`` (or ``Log`` and ``Neg``). Why this form and
not ``exp(x_i) / sum_j exp(x_j)``: every nonlinear step is then elementwise (no product of
two computed tensors, whose McCormick planes are loose), ``d_ii = 0`` exactly (so the sum is
``>= 1`` and the reciprocal never meets its pole), and the linear methods bound each
difference ``x_j - x_i`` directly, keeping the correlation between numerator and
denominator that the quotient form loses. The cost: ``n`` times more neurons (``n`` the
axis length). benchmarks/op_widths.py compares the two forms.

Opset < 13 ``Softmax`` flattens the axes from ``axis`` on (default 1); opset >= 13 works on
one axis (default -1), moved to the end by a ``Transpose`` when needed.

Shapes: ``PairDiff`` maps ``(B, *lead, n) -> (B, *lead, n, n)``; ``AxisSum`` ``(B, *lead, n)
-> (B, *lead)`` (or ``(B, *lead, 1)`` with ``keepdims``).
"""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .generic import AffineRule
from .importing import fail
from .registry import register


@register
class AxisSum(AffineRule):
    """``scale * sum(x, last axis) + shift``; attrs ``scale``, ``shift`` (floats), ``keepdims``."""

    op = "AxisSum"
    mixes = True

    def apply(self, bk, node, x, bias=True):
        a = node.attrs
        y = bk.sum(x, axis=-1, keepdims=bool(a["keepdims"])) * a["scale"]
        return y + a["shift"] if bias else y

    def apply_abs(self, bk, node, x):
        a = node.attrs
        return bk.sum(x, axis=-1, keepdims=bool(a["keepdims"])) * abs(a["scale"])

    def interval(self, bk, node, *bounds):
        # one sign of weights: the sums of the bounds themselves (the centre/radius form
        # would cancel: in float32 a variance's + eps is lost next to a radius of 1e3)
        (lo, hi), = bounds
        a, b = self.apply(bk, node, lo), self.apply(bk, node, hi)
        return (a, b) if node.attrs["scale"] >= 0 else (b, a)

    def adjoint(self, bk, node, A, in_shapes):
        a = node.attrs
        full = (A.shape[0],) + tuple(in_shapes[0])
        A = A if a["keepdims"] else A[..., None]
        return [bk.broadcast_to(A * a["scale"], full) + 0]


def add_axis_sum(ctx, out, x, label, scale=1.0, shift=0.0, keepdims=False):
    return ctx.add(out, "AxisSum", [x], attrs={"scale": float(scale), "shift": float(shift), "keepdims": bool(keepdims)},
                   source=label)


def softmax_last(ctx, out, x, log: bool, label):
    """IR nodes computing (log-)softmax of IR node ``x`` over its last axis; the last one is
    named for ONNX tensor ``out``. Returns its IR name."""
    d = ctx.add(out + "/diffs", "PairDiff", [x], source=label)
    e = ctx.add(out + "/exp", "Exp", [d], source=label)
    s = add_axis_sum(ctx, out + "/sum", e, label)
    if log:
        lg = ctx.add(out + "/log", "Log", [s], source=label)
        return ctx.add(out, "Neg", [lg], source=label)
    return ctx.add(out, "Reciprocal", [s], source=label)


def _axis(attrs, default, rank, label, op):
    axis = int(attrs.get("axis", default))
    axis = axis + rank if axis < 0 else axis
    if not 1 <= axis < rank:
        fail(label, op, f"axis={attrs.get('axis', default)} is the batch axis or out of range for rank {rank}")
    return axis


def _softmax_v1(ctx, node, attrs, label, log):
    """Opset < 13: the axes from ``axis`` on are flattened into one."""
    op = node.op_type
    x = node.input[0]
    shape = ctx.shape_of(x)
    axis = _axis(attrs, 1, len(shape) + 1, label, op)
    outer, inner = shape[: axis - 1], int(np.prod(shape[axis - 1:], dtype=np.int64))
    src = ctx.computed(x)
    flat = tuple(outer) + (inner,)
    if flat != tuple(shape):
        src = ctx.add(node.output[0] + "/flat", "Reshape", [src], source=label, shape=flat)
    if flat == tuple(shape):
        return softmax_last(ctx, node.output[0], src, log, label)
    y = softmax_last(ctx, node.output[0] + "/softmax", src, log, label)
    return ctx.add(node.output[0], "Reshape", [y], source=label, shape=tuple(shape))


def _softmax_v13(ctx, node, attrs, label, log):
    x = node.input[0]
    shape = ctx.shape_of(x)
    axis = _axis(attrs, -1, len(shape) + 1, label, node.op_type) - 1  # sample axis
    last = len(shape) - 1
    if axis == last:
        return softmax_last(ctx, node.output[0], ctx.computed(x), log, label)
    perm = [k for k in range(len(shape)) if k != axis] + [axis]
    t = ctx.add(node.output[0] + "/to_last", "Transpose", [ctx.computed(x)], attrs={"perm": tuple(perm)}, source=label)
    y = softmax_last(ctx, node.output[0] + "/softmax", t, log, label)
    inverse = tuple(perm.index(k) for k in range(len(perm)))
    return ctx.add(node.output[0], "Transpose", [y], attrs={"perm": inverse}, source=label)


_EX1 = (Example(((2, 5),), low=-3.0, high=3.0), Example(((1, 2, 3, 3),), {"axis": 2}, low=-1.0, high=1.0))
_LOG = (Example(((2, 5),), low=0.5, high=3.0), Example(((1, 2, 3, 3),), {"axis": 2}, low=0.5, high=2.0))
_EX13 = (Example(((2, 5),), low=-3.0, high=3.0), Example(((1, 2, 3, 4),), {"axis": 1}, low=-1.0, high=1.0),
         Example(((2, 3, 4),), {"axis": -1}, low=-2.0, high=2.0))
_LOG13 = (Example(((2, 5),), low=0.5, high=3.0), Example(((2, 3, 4),), {"axis": 1}, low=0.5, high=2.0))


@register
class PairDiff(AffineRule):
    """``d[..., i, j] = x[..., j] - x[..., i]`` over the last axis."""

    op = "PairDiff"
    mixes = True

    def apply(self, bk, node, x, bias=True):
        return x[..., None, :] - x[..., :, None]

    def apply_abs(self, bk, node, x):
        n = x.shape[-1]
        off = bk.asarray(1.0 - np.eye(n), dtype=x.dtype)  # the diagonal x_i - x_i has weight 0
        return (x[..., None, :] + x[..., :, None]) * off

    def adjoint(self, bk, node, A, in_shapes):
        return [bk.sum(A, axis=-2) - bk.sum(A, axis=-1)]

    # -- import: Softmax / LogSoftmax (module docstring) -----------------------------------------
    @onnx_op("Softmax", since=1, examples=_EX1)
    def convert_v1(self, ctx, node, attrs, label):
        _softmax_v1(ctx, node, attrs, label, log=False)

    @onnx_op("Softmax", since=13, examples=_EX13)
    def convert_v13(self, ctx, node, attrs, label):
        _softmax_v13(ctx, node, attrs, label, log=False)

    @onnx_op("LogSoftmax", since=1, examples=_LOG)
    def convert_log_v1(self, ctx, node, attrs, label):
        _softmax_v1(ctx, node, attrs, label, log=True)

    @onnx_op("LogSoftmax", since=13, examples=_LOG13)
    def convert_log_v13(self, ctx, node, attrs, label):
        _softmax_v13(ctx, node, attrs, label, log=True)
