"""``Slice`` of a computed tensor (ONNX Slice with steps and negative indices, and Split: one
IR Slice per output). An affine selection done by basic slicing; negative steps slice
with the positive step and then reverse that axis."""
from __future__ import annotations

import functools

import numpy as np

from .base import Example, onnx_op
from .generic import AffineRule
from .importing import fail
from .registry import register

_I64 = np.int64
_BIG = np.iinfo(np.int64).max


def axis_spec(dim: int, start: int, end: int, step: int, label):
    """ONNX ``start/end/step`` on an axis of length ``dim`` -> ``(first, stop, stride,
    reversed)``: positions ``first, first + stride, ... < stop``, then reversed when the ONNX
    step is negative (python slice semantics equal ONNX's clamping)."""
    if step == 0:
        fail(label, "Slice", "a step of 0 is not allowed")
    pos = range(*slice(int(start), int(end), int(step)).indices(dim))
    if len(pos) == 0:
        fail(label, "Slice", f"the slice [{start}:{end}:{step}] of an axis of length {dim} is empty")
    lo, hi = min(pos[0], pos[-1]), max(pos[0], pos[-1])
    return (lo, hi + 1, abs(int(step)), step < 0)


@register
class Slice(AffineRule):
    """attrs: ``index``, one ``(first, stop, stride, reversed)`` per sample axis."""

    op = "Slice"

    def _reverse(self, bk, node, y):
        for k, (_, _, _, rev) in enumerate(node.attrs["index"]):
            if rev:
                n = y.shape[k + 1]
                index = (slice(None),) * (k + 1) + (bk.const(_reversal(n), np.int64),)
                y = y[index]
        return y

    def apply(self, bk, node, x, bias=True):
        sl = (slice(None),) + tuple(slice(a, b, s) for a, b, s, _ in node.attrs["index"])
        return self._reverse(bk, node, x[sl])

    def adjoint(self, bk, node, A, in_shapes):
        out = bk.zeros((A.shape[0],) + tuple(in_shapes[0]), dtype=A.dtype)
        sl = (slice(None),) + tuple(slice(a, b, s) for a, b, s, _ in node.attrs["index"])
        out[sl] = self._reverse(bk, node, A)
        return [out]

    # -- import --------------------------------------------------------------------------------------
    def _slice(self, ctx, node, starts, ends, axes, steps, label):
        x = node.input[0]
        shape = (1,) + ctx.shape_of(x)
        rank = len(shape)
        axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
        steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
        if not (len(starts) == len(ends) == len(axes) == len(steps)):
            fail(label, "Slice", "starts, ends, axes and steps differ in length")
        index = [(0, d, 1, False) for d in shape[1:]]
        seen = set()
        for s, e, a, st in zip(starts, ends, axes, steps):
            if not -rank <= a < rank:
                fail(label, "Slice", f"axis {a} is out of range for rank {rank}")
            a = a + rank if a < 0 else a
            if a in seen:
                fail(label, "Slice", f"axis {a} appears twice")
            seen.add(a)
            if a == 0:
                if st == 0 or list(range(*slice(int(s), int(e), int(st)).indices(1))) != [0]:
                    fail(label, "Slice", "slicing the batch axis is not supported")
                continue
            index[a - 1] = axis_spec(shape[a], s, e, st, label)
        self.add_slice(ctx, node.output[0], x, index, label)

    @staticmethod
    def add_slice(ctx, onnx_out, x, index, label):
        """IR Slice of computed tensor ``x``; a slice that keeps everything is an alias."""
        shape = ctx.shape_of(x)
        if all(spec == (0, d, 1, False) for spec, d in zip(index, shape)):
            ctx.set_alias(onnx_out, ctx.computed(x))
            return
        ctx.add(onnx_out, "Slice", [ctx.computed(x)], attrs={"index": tuple(tuple(s) for s in index)}, source=label)

    @onnx_op("Slice", since=1, examples=(
        Example(((2, 6, 5),), {"starts": [1, -4], "ends": [_BIG, -1], "axes": [1, 2]}, opsets=(8, 9)),
        Example(((1, 4, 3),), {"starts": [0, 1], "ends": [1, 3]}, opsets=(8, 9)),
    ))
    def convert_attr(self, ctx, node, attrs, label):
        """Opsets 1-9: ``starts``, ``ends``, ``axes`` are attributes (no steps)."""
        axes = attrs.get("axes")
        self._slice(ctx, node, list(attrs["starts"]), list(attrs["ends"]), None if axes is None else list(axes), None,
                    label)

    @onnx_op("Slice", since=10, examples=(
        Example(((2, 7, 4), np.array([1, 0], _I64), np.array([_BIG, 3], _I64), np.array([1, 2], _I64),
                 np.array([2, 1], _I64))),
        Example(((1, 6, 5), np.array([-1, 4], _I64), np.array([-_BIG, 0], _I64), np.array([1, 2], _I64),
                 np.array([-2, -3], _I64))),
        Example(((2, 3, 8), np.array([2], _I64), np.array([-2], _I64), np.array([2], _I64))),
        Example(((1, 4, 4), np.array([0, 1], _I64), np.array([1, 4], _I64), np.array([0, -1], _I64), None)),
    ))
    def convert_input(self, ctx, node, attrs, label):
        """Opsets 10+: ``starts``, ``ends``, ``axes``, ``steps`` are constant inputs."""
        ins = list(node.input) + [""] * (5 - len(node.input))
        for n in ins[1:]:
            if n and not ctx.is_const(n):
                fail(label, "Slice", "starts, ends, axes and steps must be constant")
        get = lambda n: None if not n else [int(v) for v in np.asarray(ctx.const(n)).reshape(-1)]  # noqa: E731
        self._slice(ctx, node, get(ins[1]), get(ins[2]), get(ins[3]), get(ins[4]), label)

    # -- Split: one IR Slice per output ----------------------------------------------------------------
    def _split(self, ctx, node, axis, sizes, label, num_outputs=None):
        x = node.input[0]
        shape = (1,) + ctx.shape_of(x)
        rank = len(shape)
        if not -rank <= axis < rank:
            fail(label, "Split", f"axis {axis} is out of range for rank {rank}")
        axis = axis + rank if axis < 0 else axis
        outs = [o for o in node.output]
        dim = shape[axis]
        if sizes is None:
            n = num_outputs or len(outs)
            if num_outputs is not None:  # opset 18: the last chunk may be smaller
                chunk = -(-dim // n)
                sizes = [min(chunk, dim - k * chunk) for k in range(n)]
            else:
                if dim % n:
                    fail(label, "Split", f"axis of length {dim} does not split into {n} equal parts")
                sizes = [dim // n] * n
        sizes = [int(s) for s in sizes]
        if sum(sizes) != dim or len(sizes) != len(outs) or any(s <= 0 for s in sizes):
            fail(label, "Split", f"split sizes {sizes} do not fit an axis of length {dim} into {len(outs)} outputs")
        if axis == 0:
            if len(outs) != 1:
                fail(label, "Split", "splitting the batch axis is not supported")
            ctx.set_alias(outs[0], ctx.computed(x))
            return
        start = 0
        for out, size in zip(outs, sizes):
            index = [(0, d, 1, False) for d in shape[1:]]
            index[axis - 1] = (start, start + size, 1, False)
            start += size
            if out:
                self.add_slice(ctx, out, x, index, label)

    # (the contract tests build one-output nodes: multi-output splits are in tests/test_ops_structure.py)
    @onnx_op("Split", since=1, examples=(Example(((2, 6, 3),), {"axis": 1, "split": [6]}, opsets=(8, 12)),
                                         Example(((1, 3, 4),), {"axis": -1}, opsets=(11, 12))))
    def convert_split_attr(self, ctx, node, attrs, label):
        """Opsets 1-12: ``split`` is an attribute (or, at opset 1, an optional second input)."""
        sizes = attrs.get("split")
        if sizes is None and len(node.input) > 1 and node.input[1]:
            sizes = [int(v) for v in ctx.const(node.input[1])]
        self._split(ctx, node, attrs.get("axis", 0), None if sizes is None else list(sizes), label)

    @onnx_op("Split", since=13, examples=(Example(((2, 6, 3), np.array([6], _I64)), {"axis": 1}),
                                          Example(((1, 3, 4),), {"axis": 2}, opsets=(13, 17))))
    def convert_split_input(self, ctx, node, attrs, label):
        """Opsets 13-17: ``split`` is an optional constant input."""
        sizes = [int(v) for v in ctx.const(node.input[1])] if len(node.input) > 1 and node.input[1] else None
        self._split(ctx, node, attrs.get("axis", 0), sizes, label)

    @onnx_op("Split", since=18, examples=(Example(((2, 7, 3),), {"axis": 1, "num_outputs": 1}),
                                          Example(((1, 3, 5), np.array([5], _I64)), {"axis": -1})))
    def convert_split_18(self, ctx, node, attrs, label):
        """Opsets 18+: ``split`` input or ``num_outputs`` (last part smaller)."""
        sizes = [int(v) for v in ctx.const(node.input[1])] if len(node.input) > 1 and node.input[1] else None
        self._split(ctx, node, attrs.get("axis", 0), sizes, label,
                    None if sizes is not None else attrs.get("num_outputs", len(node.output)))


@functools.lru_cache(maxsize=256)
def _reversal(n: int) -> np.ndarray:
    r = np.arange(n - 1, -1, -1, dtype=np.int64)
    r.setflags(write=False)  # shared by the cache
    return r
