"""``Expand`` and ``Tile`` of a computed tensor by constant shapes / repeats.

``Expand`` (and the importer's broadcast of a computed operand of ``Add``/``Sub``/... with
size-1 axes, :func:`broadcast_to`) is the IR op ``Broadcast``: ``x`` repeated along the
axes where its sample shape has 1 and ``node.shape`` not (forward ``broadcast_to``, adjoint
the sum over those axes). ``Tile`` is an index map (:mod:`.indexmap`) that reads each input
value several times.
"""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .generic import AffineRule
from .importing import fail
from .indexmap import IndexMapRule, add_index_map, ids_like
from .products import unbroadcast
from .registry import register

_I64 = np.int64


@register
class Broadcast(AffineRule):
    """``x`` repeated along the axes where its sample shape has 1 and ``node.shape`` not (same
    rank)."""

    op = "Broadcast"

    def apply(self, bk, node, x, bias=True):
        return bk.broadcast_to(x, (x.shape[0],) + tuple(node.shape)) + 0

    def adjoint(self, bk, node, A, in_shapes):
        return [unbroadcast(bk, A, tuple(in_shapes[0]), 1)]

    @onnx_op("Expand", since=8, examples=(
        Example(((2, 3, 1), np.array([1, 3, 4], _I64))),
        Example(((1, 1, 4), np.array([2, 1], _I64))),
        Example(((2, 2, 1, 3), np.array([1, 1, 2, 1], _I64))),
    ))
    def convert_expand(self, ctx, node, attrs, label):
        x, s = node.input
        if not ctx.is_const(s):
            fail(label, "Expand", "the target shape must be constant")
        full = (1,) + ctx.shape_of(x)
        try:
            out = np.broadcast_shapes(full, tuple(int(v) for v in ctx.const(s)))
        except ValueError:
            fail(label, "Expand", f"shape {full} does not broadcast to {list(ctx.const(s))}")
        if len(out) != len(full) or out[0] != 1:
            fail(label, "Expand", f"expanding {full} to {out} would change the batch axis (not supported)")
        add_broadcast(ctx, node.output[0], x, out[1:], label)


def add_broadcast(ctx, onnx_out, name, shape, label):
    """Append the IR node of ONNX tensor ``onnx_out``: computed tensor ``name`` broadcast to
    sample ``shape`` (a plain Reshape when it has that shape already)."""
    shape = tuple(int(d) for d in shape)
    op = "Reshape" if tuple(ctx.shape_of(name)) == shape else "Broadcast"
    return ctx.add(onnx_out, op, [ctx.computed(name)], source=label, shape=shape)


def broadcast_to(ctx, name, shape, label):
    """IR name of ONNX tensor ``name`` broadcast to sample ``shape`` (itself when it has it)."""
    if tuple(ctx.shape_of(name)) == tuple(shape):
        return ctx.computed(name)
    return add_broadcast(ctx, name + "/broadcast", name, shape, label)


@register
class Tile(IndexMapRule):
    """A selection with repeats: ``y.flat[j] = x.flat[index[0, j]]``."""

    op = "Tile"

    @onnx_op("Tile", since=6, examples=(
        Example(((2, 3, 2), np.array([1, 2, 3], _I64))),
        Example(((1, 4), np.array([1, 1], _I64))),
        Example(((1, 2, 1, 3), np.array([1, 1, 4, 2], _I64))),
    ))
    def convert_tile(self, ctx, node, attrs, label):
        x, r = node.input[0], node.input[1]
        if not ctx.is_const(r):
            fail(label, "Tile", "the repeats must be constant")
        full = (1,) + ctx.shape_of(x)
        reps = [int(v) for v in np.asarray(ctx.const(r)).reshape(-1)]
        if len(reps) != len(full) or any(v < 1 for v in reps):
            fail(label, "Tile", f"repeats {reps} do not fit a tensor of rank {len(full)} (positive, one per axis)")
        if reps[0] != 1:
            fail(label, "Tile", "tiling the batch axis is not supported")
        ids = np.tile(ids_like(full), reps)
        add_index_map(ctx, node.output[0], "Tile", [x], ids, label, ids.shape[1:])
