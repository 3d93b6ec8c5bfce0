"""``ArgMax`` / ``ArgMin`` of a computed tensor (typically after the logits): an index output.

Forward: the index (as a float; onnxruntime gives int64), first occurrence of the extreme
unless ``select_last_index``. Bounds: an index is not a quantity to bound in the usual
sense, but a sound range exists -- index ``j`` can be the argmax only if ``u_j >= max_k l_k``
(a necessary condition whatever the tie rule), so the output lies in
``[min candidate j, max candidate j]``; with one candidate the index is decided. The linear
steps use that range as constant lines (zero coefficients on the input); the VJP is zero
(piecewise constant). ``index_output = True`` lets the CLI say that the bounds are indices
and that the logits before the node are the usual thing to bound.
"""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .importing import fail
from .ranges import RangeRule
from .registry import register


@register
class ArgMax(RangeRule):
    """attrs: ``axis`` (sample axis, 0-based), ``keepdims``, ``last`` (select_last_index),
    ``sign`` (+1 ArgMax, -1 ArgMin). Output ``(B, *shape)``: the input shape with ``axis``
    removed (or 1 with keepdims)."""

    op = "ArgMax"
    index_output = True

    def forward(self, bk, node, x):
        a = node.attrs
        v = np.asarray(bk.to_numpy(x)) * a["sign"]
        ax = a["axis"] + 1
        if a["last"]:
            n = v.shape[ax]
            idx = n - 1 - np.argmax(np.flip(v, axis=ax), axis=ax)
        else:
            idx = np.argmax(v, axis=ax)
        return bk.asarray(idx.reshape((x.shape[0],) + tuple(node.shape)).astype(np.float64), dtype=x.dtype)

    def interval(self, bk, node, bounds):
        l, u = bounds
        a = node.attrs
        ax = a["axis"] + 1
        lo, hi = np.asarray(bk.to_numpy(l), np.float64), np.asarray(bk.to_numpy(u), np.float64)
        if a["sign"] < 0:
            lo, hi = -hi, -lo
        best_low = lo.max(axis=ax, keepdims=True)
        cand = hi >= best_low  # j can be the extreme only if its upper end reaches every lower end
        n = lo.shape[ax]
        shape = [1] * lo.ndim
        shape[ax] = n
        j = np.arange(n, dtype=np.float64).reshape(shape)
        first = np.where(cand, j, np.inf).min(axis=ax)
        last = np.where(cand, j, -np.inf).max(axis=ax)
        out = (l.shape[0],) + tuple(node.shape)
        return (bk.asarray(first.reshape(out), dtype=l.dtype), bk.asarray(last.reshape(out), dtype=l.dtype))

    # -- import ------------------------------------------------------------------------------------
    def _convert(self, ctx, node, attrs, label, sign):
        x = node.input[0]
        shape = ctx.shape_of(x)
        rank = len(shape) + 1
        axis = int(attrs.get("axis", 0))
        axis = axis + rank if axis < 0 else axis
        if not 0 < axis < rank:
            fail(label, node.op_type, f"axis {attrs.get('axis', 0)} is the batch axis or out of range (rank {rank})")
        keep = bool(attrs.get("keepdims", 1))
        out = shape[:axis - 1] + ((1,) if keep else ()) + shape[axis:]
        ctx.add(node.output[0], "ArgMax", [ctx.computed(x)],
                attrs={"axis": axis - 1, "keepdims": keep, "last": bool(attrs.get("select_last_index", 0)),
                       "sign": sign}, source=label, shape=out)

    @onnx_op("ArgMax", since=1, examples=(
        Example(((2, 5),), {"axis": 1, "keepdims": 0}),
        Example(((1, 3, 4),), {"axis": -1}),
        Example(((2, 4, 3),), {"axis": 1, "keepdims": 0, "select_last_index": 1}, opsets=(12, 21)),
    ))
    def convert_argmax(self, ctx, node, attrs, label):
        self._convert(ctx, node, attrs, label, 1)

    @onnx_op("ArgMin", since=1, examples=(Example(((2, 5),), {"axis": 1, "keepdims": 0}),
                                          Example(((1, 3, 4),), {"axis": 2, "select_last_index": 1}, opsets=(12, 21))))
    def convert_argmin(self, ctx, node, attrs, label):
        self._convert(ctx, node, attrs, label, -1)
