"""Op rules: one object per IR op, registered by name.

A rule says, in one place, how its op evaluates (``forward``) and maps an interval
(``ibp``). Affine ops (:class:`AffineRule`) also give ``apply`` without the bias,
``apply_abs`` (absolute weights) and ``adjoint`` (the transpose): the forward linear pass
uses the first two, backward passes the third. Activation bounding lines live in
:mod:`onnxverify.relaxations`; MaxPool's relaxation is on its rule.
"""
from __future__ import annotations

REGISTRY: dict = {}


def register(cls):
    """Class decorator: instantiate the rule and file it under ``cls.op``."""
    REGISTRY[cls.op] = cls()
    return cls


def rule_for(op: str):
    try:
        return REGISTRY[op]
    except KeyError:
        raise KeyError(f"no IR rule for op {op!r}") from None


class OpRule:
    op = ""
    affine = False  # True: output is affine in the inputs (exact under linear bounds)

    def forward(self, bk, node, *xs):
        raise NotImplementedError

    def ibp(self, bk, node, *bounds):
        """``bounds``: one ``(lower, upper)`` pair per input -> ``(lower, upper)`` of the output."""
        raise NotImplementedError


class AffineRule(OpRule):
    """Ops ``y = L(x_1, ..., x_k) + c`` with ``L`` linear. Subclasses define ``apply``."""

    affine = True

    def apply(self, bk, node, *xs, bias: bool = True):
        raise NotImplementedError

    def apply_abs(self, bk, node, *xs):
        """``|L|(x)``: the linear part with absolute weights, no bias. Default: L itself
        (true for ops whose weights are all >= 0: reshapes, pads, pooling, concat, add)."""
        return self.apply(bk, node, *xs, bias=False)

    def adjoint(self, bk, node, A, in_shapes):
        """Transpose of the linear part: ``A (M, *out_shape)`` -> one ``(M, *in_shape)`` per input."""
        raise NotImplementedError

    def offset(self, bk, node, in_shapes, dtype):
        """The output at all-zero inputs, ``(1, *shape)``: the op's constant term."""
        zeros = [bk.zeros((1,) + tuple(s), dtype=dtype) for s in in_shapes]
        return self.apply(bk, node, *zeros, bias=True)

    def forward(self, bk, node, *xs):
        return self.apply(bk, node, *xs, bias=True)

    def ibp(self, bk, node, *bounds):
        mids = [(lo + hi) / 2 for lo, hi in bounds]
        rads = [(hi - lo) / 2 for lo, hi in bounds]
        mid = self.apply(bk, node, *mids, bias=True)
        rad = self.apply_abs(bk, node, *rads)
        return mid - rad, mid + rad


class MonotoneRule(OpRule):
    """Elementwise non-decreasing ops: the interval maps endpoint to endpoint."""

    def ibp(self, bk, node, bounds):
        lo, hi = bounds
        return self.forward(bk, node, lo), self.forward(bk, node, hi)


from . import activation, linear, pooling, structure  # noqa: E402,F401  (fill the registry)
