"""``Gather`` and ``GatherElements`` of a computed tensor with constant indices: index maps
(:mod:`.indexmap`): each output value is one input value."""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .importing import fail
from .indexmap import IndexMapRule, add_index_map, ids_like
from .registry import register

_I64 = np.int64


def constant_indices(ctx, name, label, op) -> np.ndarray:
    if not ctx.is_const(name):
        fail(label, op, "the indices must be constant (computed indices are not supported)")
    idx = np.asarray(ctx.const(name))
    if idx.dtype.kind not in "iu":
        fail(label, op, f"indices have dtype {idx.dtype}, expected integers")
    return idx.astype(np.int64)


def data_axis(ctx, x, axis, label, op) -> int:
    """ONNX ``axis`` of computed tensor ``x`` (negative allowed) as a 0-based full-tensor axis
    (the batch axis is 0, which is refused)."""
    rank = len(ctx.shape_of(x)) + 1
    if not -rank <= axis < rank:
        fail(label, op, f"axis {axis} is out of range for rank {rank}")
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        fail(label, op, "gathering along the batch axis is not supported")
    return axis


@register
class Gather(IndexMapRule):
    """A selection: ``y.flat[j] = x.flat[index[0, j]]``."""

    op = "Gather"

    @onnx_op("Gather", since=1, examples=(
        Example(((2, 5, 3), np.array([4, 0, -1, 2], _I64)), {"axis": 1}),
        Example(((2, 3, 4), np.array([[1, 1], [3, 0]], _I64)), {"axis": -1}),
        Example(((1, 4, 3), np.array(2, _I64)), {"axis": 1}),
    ))
    def convert(self, ctx, node, attrs, label):
        self._convert(ctx, node, attrs, label, _take)

    @onnx_op("GatherElements", since=11, examples=(
        Example(((1, 3, 4), np.array([[[0, 3, 3, 1], [2, 2, 0, 0]]], _I64)), {"axis": 2}),
        Example(((1, 3, 2), np.array([[[2, 0], [-1, 1], [0, 0], [1, 2]]], _I64)), {"axis": 1}),
    ))
    def convert_elements(self, ctx, node, attrs, label):
        self._convert(ctx, node, attrs, label, _take_along)

    def _convert(self, ctx, node, attrs, label, pick):
        """Both converters: constant integer indices ``idx`` into computed data ``x`` along
        ``axis``. ``pick(shape, idx, axis, fail_)`` checks ``idx`` against the full data
        ``shape`` (batch axis 1) and returns the input ids the output reads."""
        op = node.op_type
        x, i = node.input
        if ctx.is_const(x):
            fail(label, op, "gathering from a constant by computed indices is not supported")
        idx = constant_indices(ctx, i, label, op)
        axis = data_axis(ctx, x, attrs.get("axis", 0), label, op)
        ids = pick((1,) + ctx.shape_of(x), idx, axis, lambda msg: fail(label, op, msg))
        add_index_map(ctx, node.output[0], "Gather", [x], ids, label, ids.shape[1:])


def _in_range(shape, idx, axis, fail_):
    if idx.size and (idx.min() < -shape[axis] or idx.max() >= shape[axis]):
        fail_(f"indices out of range for axis {axis} of size {shape[axis]}")


def _take(shape, idx, axis, fail_):
    """``Gather``: whole slices of the data along ``axis``."""
    _in_range(shape, idx, axis, fail_)
    return np.take(ids_like(shape), idx, axis=axis)


def _take_along(shape, idx, axis, fail_):
    """``GatherElements``: one value per index, the other axes at the index's own position."""
    if idx.ndim != len(shape) or idx.shape[0] != 1:
        fail_(f"indices of shape {idx.shape} do not match data of rank {len(shape)} with one sample")
    if any(idx.shape[k] > shape[k] for k in range(len(shape)) if k != axis):
        fail_(f"indices of shape {idx.shape} are larger than the data {shape}")
    _in_range(shape, idx, axis, fail_)
    ids = ids_like(shape)[tuple(slice(0, d) if k != axis else slice(None) for k, d in enumerate(idx.shape))]
    return np.take_along_axis(ids, np.where(idx < 0, idx + shape[axis], idx), axis=axis)
