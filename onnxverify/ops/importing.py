"""Helpers the converters of several op families share (ONNX attributes, constants, padding).

A converter is a rule method ``convert(self, ctx, node, attrs, label)`` (marked with
:func:`onnxverify.ops.base.onnx_op`). ``ctx`` is the importer's context
(:class:`onnxverify.onnx.importer.ImportContext`): ``ctx.is_const(name)``,
``ctx.const(name)``, ``ctx.computed(name)`` (the IR node of a computed tensor),
``ctx.shape_of(name)`` (its sample shape), ``ctx.add(onnx_out, op, inputs, params, attrs,
source=label)`` (append an IR node), ``ctx.set_const(name, value)`` and
``ctx.set_alias(onnx_name, ir_name)``.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError


def fail(label, op, msg):
    raise ModelError(f"node {label} ({op}): {msg}")


def text(value) -> str:
    """A string attribute (bytes in onnx's helper) as str."""
    return value.decode() if isinstance(value, bytes) else value


def sample_param(c, out_rank: int, label, op) -> np.ndarray:
    """A constant broadcast against a ``(batch, *sample)`` tensor of rank ``out_rank``,
    with its batch axis removed: the result broadcasts against the sample shape."""
    c = np.asarray(c, dtype=np.float32)
    if c.ndim > out_rank:
        fail(label, op, f"constant of shape {c.shape} broadcasts beyond the tensor rank {out_rank}")
    if c.ndim == out_rank:
        if c.shape[0] != 1:
            fail(label, op, f"constant of shape {c.shape} varies along the batch axis")
        c = c[0]
    return c


def window_pads(attrs, in_hw, kernel, stride, dilation):
    """ONNX ``pads``/``auto_pad`` of a 2-D window op as ``(top, left, bottom, right)``."""
    auto = text(attrs.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        p = list(attrs.get("pads", [0, 0, 0, 0]))
        return (p[0], p[1], p[2], p[3])
    if auto == "VALID":
        return (0, 0, 0, 0)
    pads = []
    for size, k, s, d in zip(in_hw, kernel, stride, dilation):
        out = -(-size // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
    return (pads[0][0], pads[1][0], pads[0][1], pads[1][1])


def reshape_to(ctx, node, x, sample_shape, label):
    """Append an IR Reshape of computed tensor ``x`` to ``sample_shape`` (checked)."""
    size = int(np.prod(ctx.shape_of(x), dtype=np.int64))
    if int(np.prod(sample_shape, dtype=np.int64)) != size:
        fail(label, node.op_type, f"cannot reshape sample shape {ctx.shape_of(x)} to {tuple(sample_shape)}")
    ctx.add(node.output[0], "Reshape", [ctx.computed(x)], source=label, shape=tuple(int(d) for d in sample_shape))
