"""``Where`` with a constant condition: each output value is one value of ``X`` or of ``Y``
(either may be a constant): an index map (:mod:`.indexmap`) with constant fill."""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .importing import fail
from .indexmap import IndexMapRule, add_index_map, ids_like
from .registry import register

_RNG = np.random.default_rng(7)
_COND = _RNG.integers(0, 2, size=(3, 4)).astype(bool)


def operand_ids(ctx, names, out_full, label, op, shapes=None):
    """Per operand (ONNX names), ``(ids, fill)`` broadcast to ``out_full`` (or, with
    ``shapes``, each of its own shape there): computed operands get ids into the
    concatenation of the computed ones (``fill`` zero), constants ``-1`` ids and their
    values as ``fill``. Returns ``(list of (ids, fill), computed names)``."""
    out, computed, start = [], [], 0
    for k, n in enumerate(names):
        target = tuple(shapes[k]) if shapes is not None else out_full
        if ctx.is_const(n):
            c = np.asarray(ctx.const(n), dtype=np.float64)
            out.append((np.full(target, -1, dtype=np.int64), np.broadcast_to(c, target)))
            continue
        full = (1,) + ctx.shape_of(n)
        if len(full) != len(target):
            fail(label, op, f"operand {n} of shape {full} is broadcast to rank {len(target)}: its batch axis would "
                            "move (not supported)")
        out.append((np.broadcast_to(ids_like(full, start), target), np.zeros(target)))
        computed.append(n)
        start += int(np.prod(full, dtype=np.int64))
    return out, computed


def broadcast_full(ctx, names, label, op) -> tuple:
    """Broadcast shape (batch axis included, batch 1) of ONNX operands; refuses a batch > 1."""
    shapes = [np.shape(ctx.const(n)) if ctx.is_const(n) else (1,) + ctx.shape_of(n) for n in names]
    try:
        out = np.broadcast_shapes(*shapes)
    except ValueError:
        fail(label, op, f"operand shapes {shapes} do not broadcast")
    if not out or out[0] != 1:
        fail(label, op, f"operands {shapes} broadcast to {out}, which varies along the batch axis")
    return out


@register
class Where(IndexMapRule):
    """``y = cond ? x : y`` for a constant ``cond``: a selection with constant fill."""

    op = "Where"

    @onnx_op("Where", since=9, examples=(
        Example((_COND, (2, 3, 4), (2, 3, 4))),
        Example((_COND[0], (1, 3, 4), np.float32(-0.5))),
        Example((_COND[:, :1], _RNG.normal(size=(3, 4)).astype(np.float32), (2, 3, 4))),
    ))
    def convert(self, ctx, node, attrs, label):
        c, x, y = node.input
        if not ctx.is_const(c):
            fail(label, "Where", "the condition must be constant (a computed condition is not supported)")
        out = broadcast_full(ctx, [c, x, y], label, "Where")
        ((ix, fx), (iy, fy)), computed = operand_ids(ctx, [x, y], out, label, "Where")
        cond = np.broadcast_to(np.asarray(ctx.const(c)).astype(bool), out)
        add_index_map(ctx, node.output[0], "Where", computed, np.where(cond, ix, iy)[0], label, out[1:],
                      fill=np.where(cond, fx, fy)[0])
