"""Shape and wiring ops: Reshape, Transpose, Concat, Pad, and Add/Sub of two computed tensors."""
from __future__ import annotations

from . import AffineRule, register


@register
class Reshape(AffineRule):
    """attrs: none; the target is ``node.shape`` (sample shape)."""

    op = "Reshape"

    def apply(self, bk, node, x, bias=True):
        return bk.reshape(x, (x.shape[0],) + tuple(node.shape))


@register
class Transpose(AffineRule):
    """attrs: ``perm`` over the sample axes (0-based, batch axis excluded)."""

    op = "Transpose"

    def apply(self, bk, node, x, bias=True):
        return bk.transpose(x, (0,) + tuple(p + 1 for p in node.attrs["perm"]))


@register
class Concat(AffineRule):
    """attrs: ``axis`` over the sample axes (0-based, batch axis excluded)."""

    op = "Concat"

    def apply(self, bk, node, *xs, bias=True):
        return bk.concat(xs, axis=node.attrs["axis"] + 1)


@register
class Pad(AffineRule):
    """Constant padding. attrs: ``widths`` list of (before, after) per sample axis, ``value``."""

    op = "Pad"

    def apply(self, bk, node, x, bias=True):
        value = node.attrs.get("value", 0.0) if bias else 0.0
        return bk.pad(x, [(0, 0)] + [tuple(w) for w in node.attrs["widths"]], value=value)


@register
class Add(AffineRule):
    """Sum of two computed tensors of the same shape (residual connections)."""

    op = "Add"

    def apply(self, bk, node, a, b, bias=True):
        return a + b


@register
class Sub(AffineRule):
    """Difference of two computed tensors of the same shape."""

    op = "Sub"

    def apply(self, bk, node, a, b, bias=True):
        return a - b

    def apply_abs(self, bk, node, a, b):
        return a + b
