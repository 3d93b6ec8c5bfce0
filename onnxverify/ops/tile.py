"""``Expand`` and ``Tile`` of a computed tensor by constant shapes / repeats: index maps
(:mod:`.indexmap`) that read each input value several times."""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .importing import fail
from .indexmap import IndexMapRule, add_index_map, ids_like
from .registry import register

_I64 = np.int64


@register
class Tile(IndexMapRule):
    """A selection with repeats: ``y.flat[j] = x.flat[index[0, j]]``."""

    op = "Tile"

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
        ids = np.broadcast_to(ids_like(full), out)
        add_index_map(ctx, node.output[0], "Tile", [x], ids, label, out[1:])

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
