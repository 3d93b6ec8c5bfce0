"""Shape and wiring ops: Reshape, Transpose, Concat, Pad, and Add/Sub of two computed tensors."""
from __future__ import annotations

from . import AffineRule, register


@register
class Reshape(AffineRule):
    """attrs: none; the target is ``node.shape`` (sample shape)."""

    op = "Reshape"

    def apply(self, bk, node, x, bias=True):
        return bk.reshape(x, (x.shape[0],) + tuple(node.shape))

    def adjoint(self, bk, node, A, in_shapes):
        return [bk.reshape(A, (A.shape[0],) + tuple(in_shapes[0]))]


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


@register
class Add(AffineRule):
    """Sum of two computed tensors of the same shape (residual connections)."""

    op = "Add"

    def apply(self, bk, node, a, b, bias=True):
        return a + b

    def adjoint(self, bk, node, A, in_shapes):
        return [A, A]


@register
class Sub(AffineRule):
    """Difference of two computed tensors of the same shape."""

    op = "Sub"

    def apply(self, bk, node, a, b, bias=True):
        return a - b

    def apply_abs(self, bk, node, a, b):
        return a + b

    def adjoint(self, bk, node, A, in_shapes):
        return [A, -A]
