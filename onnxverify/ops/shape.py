"""Shape and wiring: ``Reshape`` (Flatten, Reshape, Squeeze, Unsqueeze), ``Transpose``,
``Concat``, ``Pad``, plus the ONNX ops that need no IR node (Identity, Dropout, Cast to a
float type are aliases; ``Shape`` of a computed tensor is a constant, and so is a ``Constant``
node's value)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper

from ..errors import ModelError
from .base import Example, onnx_op
from .generic import AffineRule
from .importing import fail, reshape_to, text
from .registry import register

_I64 = np.int64


@register
class Reshape(AffineRule):
    """attrs: none; the target is ``node.shape`` (sample shape)."""

    op = "Reshape"

    def apply(self, bk, node, x, bias=True):
        return bk.reshape(x, (x.shape[0],) + tuple(node.shape))

    def adjoint(self, bk, node, A, in_shapes):
        return [bk.reshape(A, (A.shape[0],) + tuple(in_shapes[0]))]

    # -- import: ops that change the shape only -------------------------------------------------------
    @onnx_op("Flatten", since=1, examples=(Example(((2, 3, 2, 2),)), Example(((1, 1, 4, 3),), {"axis": 2})))
    def convert_flatten(self, ctx, node, attrs, label):
        x = node.input[0]
        shape = ctx.shape_of(x)
        axis = attrs.get("axis", 1)
        axis = axis + len(shape) + 1 if axis < 0 else axis
        if axis == 0 or int(np.prod(shape[: axis - 1], dtype=np.int64)) != 1:
            fail(label, "Flatten", f"axis={attrs.get('axis', 1)} would merge the batch axis into the features")
        reshape_to(ctx, node, x, (int(np.prod(shape, dtype=np.int64)),), label)

    @onnx_op("Reshape", since=5, examples=(Example(((2, 12), np.array([-1, 3, 4], _I64))),
                                           Example(((1, 2, 6), np.array([0, 3, 2, 2], _I64)))))
    def convert_reshape(self, ctx, node, attrs, label):
        x, s = node.input
        if not ctx.is_const(s):
            fail(label, "Reshape", "the target shape must be constant (or foldable shape arithmetic)")
        target = [int(v) for v in ctx.const(s)]
        shape = ctx.shape_of(x)
        full_in = (1,) + shape
        if not attrs.get("allowzero", 0):
            target = [full_in[k] if v == 0 and k < len(full_in) else v for k, v in enumerate(target)]
        if not target or target[0] not in (1, -1):
            fail(label, "Reshape", f"target shape {target} does not keep the leading batch axis")
        rest = target[1:]
        size = int(np.prod(shape, dtype=np.int64))
        if rest.count(-1) == 1:  # (a -1 batch entry with a -1 elsewhere: the batch is 1)
            known = int(np.prod([v for v in rest if v != -1], dtype=np.int64))
            rest = [size // known if v == -1 else v for v in rest]
        reshape_to(ctx, node, x, tuple(rest), label)

    def _squeeze(self, ctx, node, axes, label):
        x = node.input[0]
        shape = list(ctx.shape_of(x))
        if node.op_type == "Squeeze":
            rank = len(shape) + 1
            axes = [a + rank if a < 0 else a for a in axes] if axes is not None else \
                [k + 1 for k, d in enumerate(shape) if d == 1]
            if 0 in axes:
                fail(label, "Squeeze", "squeezing the batch axis is not supported")
            new = [d for k, d in enumerate(shape) if k + 1 not in axes]
        else:
            rank = len(shape) + 1 + len(axes)
            axes = sorted(a + rank if a < 0 else a for a in axes)
            if 0 in axes:
                fail(label, "Unsqueeze", "inserting an axis before the batch axis is not supported")
            new = [1] + shape
            for a in axes:
                new.insert(a, 1)
            new = new[1:]
        reshape_to(ctx, node, x, tuple(new), label)

    @onnx_op("Squeeze", since=1, examples=(Example(((2, 1, 4),), {"axes": [1]}, opsets=(8, 12)),))
    @onnx_op("Unsqueeze", since=1, examples=(Example(((2, 4),), {"axes": [1, -1]}, opsets=(8, 12)),))
    def convert_squeeze_attr(self, ctx, node, attrs, label):
        """Opsets 1-12: ``axes`` is an attribute."""
        axes = attrs.get("axes")
        self._squeeze(ctx, node, list(axes) if axes is not None else None, label)

    @onnx_op("Squeeze", since=13, examples=(Example(((2, 1, 4), np.array([1], _I64))), Example(((2, 1, 4, 1),))))
    @onnx_op("Unsqueeze", since=13, examples=(Example(((2, 4), np.array([1, -1], _I64))),))
    def convert_squeeze_input(self, ctx, node, attrs, label):
        """Opsets 13+: ``axes`` is an optional constant input."""
        axes = [int(a) for a in ctx.const(node.input[1])] if len(node.input) > 1 and node.input[1] else None
        if axes is None and node.op_type == "Unsqueeze":
            fail(label, "Unsqueeze", "the axes input is required")
        self._squeeze(ctx, node, axes, label)

    # -- import: aliases and constants --------------------------------------------------------------
    @onnx_op("Identity", since=1, examples=(Example(((2, 3),)),))
    @onnx_op("Dropout", since=1, examples=(Example(((2, 3),)),))
    @onnx_op("Cast", since=1, examples=(Example(((2, 3),), {"to": onnx.TensorProto.FLOAT}),))
    def convert_alias(self, ctx, node, attrs, label):
        """Identity, Dropout (inference: identity, mask of ones) and Cast to a float type."""
        if node.op_type == "Cast" and attrs.get("to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            fail(label, "Cast", "casts of computed tensors to non-float types are not supported")
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            ctx.set_const(node.output[1], np.ones((1,) + ctx.shape_of(node.input[0]), dtype=bool))
        ctx.set_alias(node.output[0], ctx.computed(node.input[0]))

    @onnx_op("Shape", since=1, yields_constant=True)
    def convert_shape(self, ctx, node, attrs, label):
        """The shape of a computed tensor is a constant (batch axis 1, like the probes)."""
        full = np.array((1,) + ctx.shape_of(node.input[0]), dtype=np.int64)
        ctx.set_const(node.output[0], full[attrs.get("start", 0):attrs.get("end", None)])

    @onnx_op("Constant", since=1, yields_constant=True)
    def convert_constant(self, ctx, node, attrs, label):
        """A constant from its attribute (``value``, ``value_float(s)``, ``value_int(s)``)."""
        if "value" in attrs:
            ctx.set_const(node.output[0], onnx.numpy_helper.to_array(attrs["value"]))
            return
        for key, dtype in (("value_float", np.float32), ("value_int", np.int64),
                           ("value_floats", np.float32), ("value_ints", np.int64)):
            if key in attrs:
                v = attrs[key]
                ctx.set_const(node.output[0], np.asarray(list(v) if key.endswith("s") else v, dtype=dtype))
                return
        raise ModelError(f"Constant node {label}: unsupported attribute {list(attrs)}")


@register
class Transpose(AffineRule):
    """attrs: ``perm`` over the sample axes (0-based, batch axis excluded)."""

    op = "Transpose"

    def apply(self, bk, node, x, bias=True):
        return bk.transpose(x, (0,) + tuple(p + 1 for p in node.attrs["perm"]))

    def adjoint(self, bk, node, A, in_shapes):
        perm = node.attrs["perm"]
        inverse = [perm.index(k) for k in range(len(perm))]
        return [bk.transpose(A, (0,) + tuple(p + 1 for p in inverse))]

    @onnx_op("Transpose", since=1, examples=(Example(((2, 3, 4, 5),), {"perm": [0, 3, 1, 2]}), Example(((1, 2, 3),), {"perm": [0, 2, 1]})))
    def convert(self, ctx, node, attrs, label):
        x = node.input[0]
        rank = len(ctx.shape_of(x)) + 1
        perm = list(attrs.get("perm", list(range(rank))[::-1]))
        if perm[0] != 0:
            fail(label, "Transpose", f"perm {perm} moves the batch axis")
        ctx.add(node.output[0], "Transpose", [ctx.computed(x)], attrs={"perm": tuple(p - 1 for p in perm[1:])},
                source=label)


@register
class Concat(AffineRule):
    """attrs: ``axis`` over the sample axes (0-based, batch axis excluded)."""

    op = "Concat"

    def apply(self, bk, node, *xs, bias=True):
        return bk.concat(xs, axis=node.attrs["axis"] + 1)

    def adjoint(self, bk, node, A, in_shapes):
        axis, out, start = node.attrs["axis"] + 1, [], 0
        for s in in_shapes:
            index = [slice(None)] * A.ndim
            index[axis] = slice(start, start + s[axis - 1])
            out.append(A[tuple(index)])
            start += s[axis - 1]
        return out

    @onnx_op("Concat", since=4, examples=(Example(((2, 3, 2), (2, 1, 2)), {"axis": 1}),
                                          Example(((1, 2, 3), (1, 2, 2), (1, 2, 1)), {"axis": -1})))
    def convert(self, ctx, node, attrs, label):
        if any(ctx.is_const(i) for i in node.input):
            fail(label, "Concat", "concatenating a computed tensor with a constant is not supported")
        rank = len(ctx.shape_of(node.input[0])) + 1
        axis = attrs["axis"] + rank if attrs["axis"] < 0 else attrs["axis"]
        if axis == 0:
            fail(label, "Concat", "concatenation along the batch axis is not supported")
        ctx.add(node.output[0], "Concat", [ctx.computed(i) for i in node.input], attrs={"axis": axis - 1},
                source=label)


@register
class Pad(AffineRule):
    """Constant padding. attrs: ``widths`` list of (before, after) per sample axis, ``value``."""

    op = "Pad"

    def apply(self, bk, node, x, bias=True):
        value = node.attrs.get("value", 0.0) if bias else 0.0
        return bk.pad(x, [(0, 0)] + [tuple(w) for w in node.attrs["widths"]], value=value)

    def adjoint(self, bk, node, A, in_shapes):
        index = [slice(None)] + [slice(b, b + s) for (b, _), s in zip(node.attrs["widths"], in_shapes[0])]
        return [A[tuple(index)]]

    def _pad(self, ctx, node, pads, value, label):
        x = node.input[0]
        rank = len(ctx.shape_of(x)) + 1
        if len(pads) != 2 * rank or any(p < 0 for p in pads):
            fail(label, "Pad", f"pads {pads} are not 2*rank non-negative values")
        if pads[0] or pads[rank]:
            fail(label, "Pad", "padding the batch axis is not supported")
        widths = [(pads[k], pads[k + rank]) for k in range(1, rank)]
        ctx.add(node.output[0], "Pad", [ctx.computed(x)], attrs={"widths": widths, "value": value}, source=label)

    @staticmethod
    def _constant_mode(attrs, label):
        mode = text(attrs.get("mode", "constant"))
        if mode != "constant":
            fail(label, "Pad", f"mode={mode!r} is not supported (only 'constant')")

    @onnx_op("Pad", since=2, examples=(Example(((1, 2, 3, 3),), {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "value": 0.5},
                                               opsets=(8, 10)),))
    def convert_attr(self, ctx, node, attrs, label):
        """Opsets 2-10: ``pads`` and ``value`` are attributes."""
        self._constant_mode(attrs, label)
        self._pad(ctx, node, list(attrs["pads"]), float(attrs.get("value", 0.0)), label)

    @onnx_op("Pad", since=11, examples=(Example(((1, 2, 3, 3), np.array([0, 0, 1, 0, 0, 0, 0, 2], _I64))),
                                        Example(((2, 4), np.array([0, 1, 0, 2], _I64), np.float32(-1.0)))))
    def convert_input(self, ctx, node, attrs, label):
        """Opsets 11+: ``pads`` and ``constant_value`` are constant inputs."""
        self._constant_mode(attrs, label)
        if len(node.input) > 3 and node.input[3]:
            fail(label, "Pad", "the 'axes' input is not supported")
        pads = [int(v) for v in ctx.const(node.input[1])]
        value = float(np.asarray(ctx.const(node.input[2])).reshape(-1)[0]) if len(node.input) > 2 and node.input[2] \
            else 0.0
        self._pad(ctx, node, pads, value, label)
