"""``OneHot`` of a computed index tensor (typically ``ArgMax`` -> ``OneHot`` after the logits).

onnxruntime's semantics: an index is truncated toward zero, a negative one counts from the
end (``i + depth``), one outside ``[-depth, depth - 1]`` gives a row of ``off`` values; the
output has ``depth`` inserted at ``axis``; ``depth`` and ``values = [off, on]`` are constants.

Bounds: truncation is non-decreasing, so on ``x`` in ``[l, u]`` the index takes integer
values in ``[trunc(l), trunc(u)]``. Class ``j`` is ``on`` only if some integer of that range
maps to it (``i = j`` or ``i = j - depth``), and it is certainly ``on`` only if the range is
one integer mapping to ``j``; otherwise it can be ``off``. The output lies between those
values (:class:`~onnxverify.ops.ranges.RangeRule`: constant lines). The output is a code of
an index (``index_output``): the CLI bounds the logits before the ArgMax instead.
"""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .importing import fail
from .ranges import RangeRule
from .registry import register


def _moved(bk, node, z, like):
    """``z (B, *index_shape, depth)`` NumPy -> ``(B, *node.shape)``: depth at ``axis``."""
    return bk.asarray(np.moveaxis(z, -1, node.attrs["axis"] + 1), dtype=like.dtype)


@register
class OneHot(RangeRule):
    """attrs: ``depth``, ``axis`` (0-based sample axis of the output), ``off``, ``on``.
    Input ``(B, *index_shape)`` -> output ``(B, *node.shape)``."""

    op = "OneHot"
    index_output = True

    @staticmethod
    def _hits(i, d: int):
        """Integer indices ``(...)`` -> bool ``(..., d)``: which class each one selects."""
        wrapped = np.where(i < 0, i + d, i)
        return np.arange(d) == np.where((i >= -d) & (i < d), wrapped, -1)[..., None]

    def forward(self, bk, node, x):
        a = node.attrs
        hit = self._hits(np.trunc(np.asarray(bk.to_numpy(x), np.float64)), a["depth"])
        return _moved(bk, node, np.where(hit, a["on"], a["off"]), x)

    def interval(self, bk, node, bounds):
        l, u = bounds
        a = node.attrs
        d = a["depth"]
        lo = np.trunc(np.asarray(bk.to_numpy(l), np.float64))[..., None]
        hi = np.trunc(np.asarray(bk.to_numpy(u), np.float64))[..., None]
        j = np.arange(d)
        can_on = ((lo <= j) & (j <= hi)) | ((lo <= j - d) & (j - d <= hi))
        single = lo == hi
        surely_on = single & self._hits(lo[..., 0], d)
        can_off = ~surely_on
        on, off = a["on"], a["off"]
        low = np.where(can_on & can_off, min(on, off), np.where(surely_on, on, off))
        high = np.where(can_on & can_off, max(on, off), np.where(surely_on, on, off))
        return _moved(bk, node, low, l), _moved(bk, node, high, l)

    @onnx_op("OneHot", since=9, examples=(
        Example(((2, 3), np.array(4.0, np.float32), np.array([0.0, 1.0], np.float32)), {}, low=-5.0, high=5.0),
        Example(((1, 2, 3), np.array([5.0], np.float32), np.array([-1.0, 2.0], np.float32)), {"axis": 1},
                low=-6.0, high=6.0),
        Example(((2, 4), np.array(3.0, np.float32), np.array([3.0, -2.0], np.float32)), {"axis": -2},
                low=-4.0, high=4.0, opsets=(11, 21)),
    ))
    def convert(self, ctx, node, attrs, label):
        x, depth, values = node.input
        for name, what in ((depth, "depth"), (values, "values")):
            if not ctx.is_const(name):
                fail(label, "OneHot", f"{what} must be a constant")
        d = np.asarray(ctx.const(depth)).reshape(-1)
        v = np.asarray(ctx.const(values), np.float64).reshape(-1)
        if d.size != 1 or v.size != 2:
            fail(label, "OneHot", f"depth must be one value and values two ([off, on]); got {d.size} and {v.size}")
        depth_n = int(np.trunc(d[0]))
        if depth_n < 1:
            fail(label, "OneHot", f"depth {d[0]} must be at least 1")
        shape = ctx.shape_of(x)
        rank = len(shape) + 2  # the output's rank, batch axis included
        axis = int(attrs.get("axis", -1))
        axis = axis + rank if axis < 0 else axis
        if not 0 < axis < rank:
            fail(label, "OneHot", f"axis {attrs.get('axis', -1)} is the batch axis or out of range (output rank {rank})")
        out = shape[:axis - 1] + (depth_n,) + shape[axis - 1:]
        ctx.add(node.output[0], "OneHot", [ctx.computed(x)],
                attrs={"depth": depth_n, "axis": axis - 1, "off": float(v[0]), "on": float(v[1])},
                source=label, shape=out)
