"""Rules whose linear steps are constant lines at their own interval.

For ops whose output is piecewise constant in the input (an index, a one-hot code), the
sound linear relaxation with the least work is the pair of horizontal lines through the
interval the rule computes: ``lower <= y <= upper`` with zero coefficients on the input. The
linear methods then reproduce the interval bound of the node, which is the best any line
can do where the output jumps. Such outputs are usually not what one bounds: the CLI
bounds the tensor before them (``index_output``, see
:meth:`onnxverify.network.Network.without_index_output`).
"""
from __future__ import annotations

from .base import Maps, OpRule, each_side
from .generic import flat


class RangeRule(OpRule):
    """A rule whose relaxation is its interval: subclasses give ``forward`` and ``interval``."""

    mixes = True

    def relax(self, bk, node, bounds, strategy):
        """``(lower, upper)`` of the output, ``(B, *node.shape)``: the constant lines."""
        return self.interval(bk, node, *bounds)

    def forward_linear(self, bk, node, relax, maps):
        lo, hi = relax
        m = maps[0]
        k = bk.zeros((m.Lk.shape[0], m.Lk.shape[1]) + tuple(node.shape), dtype=m.Lk.dtype, like=m.Lk)
        return Maps(k, lo, k, hi)

    def backward_linear(self, bk, node, step, AL, AU):
        """Zero coefficients on every input; biases ``(B, K)``: each row's coefficients
        against the end of the range on its side."""
        lo, hi = step.relax  # (B, *shape): shared by every row

        def side(A, upper):
            small, big = (hi, lo) if upper else (lo, hi)
            zeros = [bk.zeros(tuple(A.shape[:2]) + tuple(s), dtype=A.dtype, like=A) for s in step.in_shapes]
            return zeros, bk.split_dot(flat(bk, A, 2), flat(bk, small, 1), flat(bk, big, 1))

        return each_side(AL, AU, side)

    def vjp(self, bk, node, g, xs, y):
        return [x * 0 for x in xs]
