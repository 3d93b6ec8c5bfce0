"""Reductions over sample axes: ``ReduceSum`` (ReduceSum, ReduceMean: linear, weights >= 0)
and ``ReduceMax`` (ReduceMax, ReduceMin: nonlinear, relaxed like MaxPool).

ReduceMax relaxation on the input box (``y = max_j x_j`` over the reduced positions of one
output): the lower line ``y >= x_j*`` with ``j*`` the argmax of the lower bounds (sound:
``max >= any element``); the upper line ``y <= x_j*`` when ``j*`` dominates
(``l_j* >= u_j`` for all ``j != j*``: then ``max = x_j*`` on the whole box), else the constant
``y <= max_j u_j``. ReduceMin is ``-max(-x)``: the same lines mirrored (``y <= x_j*`` with
``j*`` the argmin of the upper bounds; ``y >= x_j*`` when it dominates, else ``y >= min_j l_j``).
"""
from __future__ import annotations

import numpy as np

from .base import Example, Maps, OpRule, each_side, onnx_op
from .generic import AffineRule
from .importing import fail
from .registry import register

_I64 = np.int64


def reduce_axes(ctx, x, axes, keepdims, noop, label, op):
    """ONNX ``axes`` (None: all) of computed tensor ``x`` -> sorted 0-based sample axes, or
    None when the node is the identity (``noop_with_empty_axes`` and no axes)."""
    rank = len(ctx.shape_of(x)) + 1
    if not axes:
        if noop:
            return None
        axes = list(range(rank))
    out = set()
    for a in axes:
        a = int(a)
        if not -rank <= a < rank:
            fail(label, op, f"axis {a} is out of range for rank {rank}")
        out.add(a + rank if a < 0 else a)
    if 0 in out and not keepdims:
        fail(label, op, "reducing over the batch axis without keepdims removes it (not supported)")
    return sorted(a - 1 for a in out if a != 0)


def _perm(in_shape, axes):
    kept = [k for k in range(len(in_shape)) if k not in axes]
    return kept, kept + list(axes)


def to_rows(bk, x, axes):
    """``(M, *in_shape)`` -> ``(M, n_kept, n_reduced)``: reduced axes last, C-order."""
    in_shape = tuple(x.shape[1:])
    kept, perm = _perm(in_shape, axes)
    r = int(np.prod([in_shape[a] for a in axes], dtype=np.int64))
    return bk.reshape(bk.transpose(x, (0,) + tuple(p + 1 for p in perm)), (x.shape[0], -1, r))


def from_rows(bk, z, in_shape, axes):
    """Inverse of :func:`to_rows`: ``(M, n_kept, n_reduced)`` -> ``(M, *in_shape)``."""
    kept, perm = _perm(in_shape, axes)
    z = bk.reshape(z, (z.shape[0],) + tuple(in_shape[p] for p in perm))
    inverse = [perm.index(k) for k in range(len(perm))]
    return bk.transpose(z, (0,) + tuple(p + 1 for p in inverse))


def _out_shape(in_shape, axes, keepdims):
    if keepdims:
        return tuple(1 if k in axes else d for k, d in enumerate(in_shape))
    return tuple(d for k, d in enumerate(in_shape) if k not in axes)


def _convert(ctx, node, attrs, label, axes, ir_op, extra):
    x = node.input[0]
    keep = bool(attrs.get("keepdims", 1))
    axes = reduce_axes(ctx, x, axes, keep, attrs.get("noop_with_empty_axes", 0), label, node.op_type)
    if axes is None or (not axes and keep):  # identity (or only the batch axis of size 1)
        ctx.set_alias(node.output[0], ctx.computed(x))
        return
    shape = ctx.shape_of(x)
    attrs_ir = {"axes": tuple(axes), "keepdims": keep, **extra(shape, axes)}
    ctx.add(node.output[0], ir_op, [ctx.computed(x)], attrs=attrs_ir, source=label, shape=_out_shape(shape, axes, keep))


def _axes_input(ctx, node, label):
    if len(node.input) > 1 and node.input[1]:
        if not ctx.is_const(node.input[1]):
            fail(label, node.op_type, "the axes must be constant")
        return [int(a) for a in np.asarray(ctx.const(node.input[1])).reshape(-1)]
    return None


_EX_ATTR = (Example(((2, 3, 4, 2),), {"axes": [2, 3], "keepdims": 1}), Example(((1, 3, 4),), {"axes": [1], "keepdims": 0}),
            Example(((1, 5),), {}))
_EX_INPUT = (Example(((2, 3, 4, 2), np.array([1, 3], _I64)), {"keepdims": 0}), Example(((1, 3, 4),), {"keepdims": 1}),
             Example(((2, 3, 4), np.array([-1], _I64)), {}))


@register
class ReduceSum(AffineRule):
    """attrs: ``axes`` (0-based sample axes), ``keepdims``, ``scale`` (1 for sums,
    ``1 / count`` for means)."""

    op = "ReduceSum"
    mixes = True

    def apply(self, bk, node, x, bias=True):
        a = node.attrs
        y = bk.sum(x, axis=tuple(k + 1 for k in a["axes"]), keepdims=True) * a["scale"]
        return bk.reshape(y, (x.shape[0],) + tuple(node.shape))

    def adjoint(self, bk, node, A, in_shapes):
        a = node.attrs
        in_shape = tuple(in_shapes[0])
        kept = bk.reshape(A, (A.shape[0],) + _out_shape(in_shape, a["axes"], True))
        return [bk.broadcast_to(kept, (A.shape[0],) + in_shape) * a["scale"]]

    @staticmethod
    def _extra(mean):
        def extra(shape, axes):
            count = int(np.prod([shape[k] for k in axes], dtype=np.int64))
            return {"scale": 1.0 / count if mean else 1.0}
        return extra

    @onnx_op("ReduceSum", since=1, examples=_EX_ATTR)
    def convert_sum_attr(self, ctx, node, attrs, label):
        """Opsets 1-12: ``axes`` is an attribute."""
        _convert(ctx, node, attrs, label, attrs.get("axes"), "ReduceSum", self._extra(False))

    @onnx_op("ReduceSum", since=13, examples=_EX_INPUT + (Example(((2, 3),), {"noop_with_empty_axes": 1}),))
    def convert_sum_input(self, ctx, node, attrs, label):
        """Opsets 13+: ``axes`` is an optional constant input."""
        _convert(ctx, node, attrs, label, _axes_input(ctx, node, label), "ReduceSum", self._extra(False))

    @onnx_op("ReduceMean", since=1, examples=_EX_ATTR)
    def convert_mean_attr(self, ctx, node, attrs, label):
        """Opsets 1-17: ``axes`` is an attribute."""
        _convert(ctx, node, attrs, label, attrs.get("axes"), "ReduceSum", self._extra(True))

    @onnx_op("ReduceMean", since=18, examples=_EX_INPUT)
    def convert_mean_input(self, ctx, node, attrs, label):
        """Opsets 18+: ``axes`` is an optional constant input."""
        _convert(ctx, node, attrs, label, _axes_input(ctx, node, label), "ReduceSum", self._extra(True))


@register
class ReduceMax(OpRule):
    """attrs: ``axes``, ``keepdims``, ``sign`` (+1: max, -1: min = ``-max(-x)``). See the
    module docstring for the relaxation."""

    op = "ReduceMax"
    monotone = True
    mixes = True

    def forward(self, bk, node, x):
        s = node.attrs["sign"]
        rows = to_rows(bk, x, node.attrs["axes"])
        y = bk.amax(rows if s > 0 else -rows, axis=2)
        return bk.reshape(y if s > 0 else -y, (x.shape[0],) + tuple(node.shape))

    def relax(self, bk, node, bounds, strategy):
        """``(select, decided, const)``: ``select (B, n_kept, n_reduced)`` one-hot of ``j*``,
        ``decided (B, n_kept)`` 0/1, ``const (B, n_kept)`` the constant line (``max u`` for
        max, ``min l`` for min). The same for every strategy."""
        (l, u), = bounds
        s, axes = node.attrs["sign"], node.attrs["axes"]
        lz, uz = (to_rows(bk, l, axes), to_rows(bk, u, axes)) if s > 0 else (-to_rows(bk, u, axes), -to_rows(bk, l, axes))
        best = np.argmax(np.asarray(bk.to_numpy(lz)), axis=2)
        onehot = (np.arange(lz.shape[2]) == best[..., None]).astype(np.float64)
        select = bk.asarray(onehot, dtype=l.dtype)
        chosen = bk.sum(select * lz, axis=2)
        others = bk.amax(bk.where(select > 0, -np.inf, uz), axis=2)
        decided = bk.where(chosen >= others, chosen * 0 + 1, chosen * 0)
        top = bk.amax(uz, axis=2)
        return select, decided, top if s > 0 else -top

    def _pick(self, bk, node, k, select, in_shape):
        """``k (M, *in_shape)`` with ``M`` a multiple of the batch of ``select`` -> the selected
        values ``(M, n_kept)``."""
        rows = to_rows(bk, k, node.attrs["axes"])
        B = select.shape[0]
        rows = bk.reshape(rows, (B, -1) + tuple(rows.shape[1:]))
        return bk.reshape(bk.sum(rows * select[:, None], axis=3), (rows.shape[0] * rows.shape[1], -1))

    def forward_linear(self, bk, node, relax, maps):
        select, dec, const = relax
        (m,) = maps
        B, n0 = m.Lk.shape[:2]
        in_shape = tuple(m.Lc.shape[1:])
        out = (B,) + tuple(node.shape)
        gk = lambda k: bk.reshape(self._pick(bk, node, bk.reshape(k, (B * n0,) + in_shape), select, in_shape),  # noqa: E731
                                  (B, n0) + tuple(node.shape))
        gc = lambda c: bk.reshape(self._pick(bk, node, c, select, in_shape), out)  # noqa: E731
        d, c = bk.reshape(dec, out), bk.reshape(const, out)
        if node.attrs["sign"] > 0:  # lower: x_j*; upper: x_j* if decided else max u
            return Maps(gk(m.Lk), gc(m.Lc), gk(m.Uk) * d[:, None], gc(m.Uc) * d + (1 - d) * c)
        return Maps(gk(m.Lk) * d[:, None], gc(m.Lc) * d + (1 - d) * c, gk(m.Uk), gc(m.Uc))

    def backward_linear(self, bk, node, step, AL, AU):
        select, dec, const = step.relax
        in_shape = tuple(step.in_shapes[0])
        B, K = AL.shape[:2]
        d, c = dec[:, None], const[:, None]  # (B, 1, n_kept)

        def side(A, upper):
            A = bk.reshape(A, (B, K, -1))
            lower_part, upper_part = (bk.neg(A), bk.pos(A)) if upper else (bk.pos(A), bk.neg(A))
            # the exact line is the lower one for max, the upper one for min
            exact, other = (lower_part, upper_part) if node.attrs["sign"] > 0 else (upper_part, lower_part)
            coef = exact + other * d
            spread = bk.reshape(coef[..., None] * select[:, None], (B * K,) + tuple(select.shape[1:]))
            return ([bk.reshape(from_rows(bk, spread, in_shape, node.attrs["axes"]), (B, K) + in_shape)],
                    bk.sum(other * (1 - d) * c, axis=2))

        return each_side(AL, AU, side)

    def vjp(self, bk, node, g, xs, y):
        x = xs[0]
        select, _, _ = self.relax(bk, node, [(x, x)], "adaptive")
        spread = bk.reshape(g, (g.shape[0], -1, 1)) * select
        return [from_rows(bk, spread, tuple(x.shape[1:]), node.attrs["axes"])]

    @staticmethod
    def _extra(sign):
        return lambda shape, axes: {"sign": sign}

    @onnx_op("ReduceMax", since=1, examples=_EX_ATTR)
    def convert_max_attr(self, ctx, node, attrs, label):
        """Opsets 1-17: ``axes`` is an attribute."""
        _convert(ctx, node, attrs, label, attrs.get("axes"), "ReduceMax", self._extra(1))

    @onnx_op("ReduceMax", since=18, examples=_EX_INPUT)
    def convert_max_input(self, ctx, node, attrs, label):
        """Opsets 18+: ``axes`` is an optional constant input."""
        _convert(ctx, node, attrs, label, _axes_input(ctx, node, label), "ReduceMax", self._extra(1))

    @onnx_op("ReduceMin", since=1, examples=_EX_ATTR)
    def convert_min_attr(self, ctx, node, attrs, label):
        _convert(ctx, node, attrs, label, attrs.get("axes"), "ReduceMax", self._extra(-1))

    @onnx_op("ReduceMin", since=18, examples=_EX_INPUT)
    def convert_min_input(self, ctx, node, attrs, label):
        _convert(ctx, node, attrs, label, _axes_input(ctx, node, label), "ReduceMax", self._extra(-1))
