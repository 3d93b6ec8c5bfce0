"""``TopK`` of a computed tensor (typically after the logits): the k largest (or smallest)
values along an axis, sorted, and their indices.

The converter maps ``k = 1`` onto existing rules -- the values are ``ReduceMax`` /
``ReduceMin`` with keepdims (its MaxPool-like lines), the indices are ``ArgMax`` / ``ArgMin``
(onnxruntime's tie rule: the lower index first) -- and ``k > 1`` onto the two rules here.

Bounds, for the ``r``-th largest (0-based) along the axis, ``x`` in ``[l, u]``:

* values: the ``r``-th order statistic is non-decreasing in every coordinate, so
  ``r-th largest of l <= v_r <= r-th largest of u``;
* which index can sit at position ``r``: with ``G_i = #{k : l_k > u_i}`` elements certainly
  above ``x_i`` and ``S_i = #{k : u_k < l_i}`` certainly below, any tie rule puts ``i`` at a
  position in ``[G_i, n - 1 - S_i]``; so ``i`` is a candidate for ``r`` only if
  ``G_i <= r <= n - 1 - S_i``. The index output lies in ``[min, max]`` of the candidates
  (decided when there is one), and a value whose position has one candidate ``i`` equals
  ``x_i`` on the whole box: its lines are exact (``y = x_i``), the others constant.

``largest = 0`` is ``-TopK(-x)`` with the same index rule. ``sorted = 0`` leaves the order
to the runtime; it is accepted only for ``k = 1``.
"""
from __future__ import annotations

import numpy as np

from .base import Example, Maps, each_side, onnx_op
from .generic import flat
from .importing import fail
from .ranges import RangeRule
from .registry import register

_I64 = np.int64


# ---- axis handling: (N, *shape) <-> (N, M, n) with the TopK axis last -----------------------------
def _perm(rank: int, axis: int):
    return [d for d in range(rank) if d != axis] + [axis]


def to_rows(bk, x, axis: int):
    """``(N, *shape)`` -> ``(N, M, n)``: the sample axis ``axis`` last, the others C-order."""
    perm = _perm(x.ndim - 1, axis)
    t = bk.transpose(x, (0,) + tuple(p + 1 for p in perm))
    return bk.reshape(t, (x.shape[0], -1, x.shape[axis + 1]))


def from_rows(bk, z, shape, axis: int):
    """Inverse of :func:`to_rows`: ``(N, M, k)`` -> ``(N, *shape)`` (``shape[axis] = k``)."""
    perm = _perm(len(shape), axis)
    t = bk.reshape(z, (z.shape[0],) + tuple(shape[p] for p in perm))
    inverse = [perm.index(d) for d in range(len(perm))]
    return bk.transpose(t, (0,) + tuple(p + 1 for p in inverse))


def _np_rows(bk, a, axis, sign):
    """NumPy float64 ``(B, M, n)`` of ``sign * a``."""
    return np.asarray(bk.to_numpy(to_rows(bk, a, axis)), dtype=np.float64) * sign


def topk_order(v, k: int):
    """``v (B, M, n)`` -> indices ``(B, M, k)`` of the k largest, lower index first on ties."""
    return np.argsort(-v, axis=2, kind="stable")[..., :k]


def candidates(lo, hi, k: int):
    """Bool ``(B, M, k, n)``: index ``i`` can be at position ``r`` for some ``x`` in
    ``[lo, hi] (B, M, n)`` (the largest first)."""
    n = lo.shape[2]
    above = (lo[:, :, None, :] > hi[:, :, :, None]).sum(axis=3)  # G_i: (B, M, n)
    below = (hi[:, :, None, :] < lo[:, :, :, None]).sum(axis=3)  # S_i
    r = np.arange(k).reshape(1, 1, k, 1)
    return (above[:, :, None, :] <= r) & (r <= n - 1 - below[:, :, None, :])


def _examples(with_k_input: bool, since_11: bool):
    def ex(shape, k, attrs, output=0, opsets=None):
        inputs = (shape, np.array([k], _I64)) if with_k_input else (shape,)
        attrs = dict(attrs) if with_k_input else {"k": k, **attrs}
        return Example(inputs, attrs, outputs=2, output=output, opsets=opsets)

    out = [ex((2, 6), 3, {"axis": 1}), ex((2, 6), 3, {"axis": 1}, output=1),
           ex((1, 4, 5), 1, {}), ex((1, 4, 5), 1, {"axis": 1}, output=1), ex((2, 3, 4), 2, {"axis": -2}, output=1)]
    if since_11:
        out += [ex((2, 6), 4, {"axis": 1, "largest": 0}), ex((2, 6), 2, {"largest": 0}, output=1),
                ex((1, 5), 1, {"largest": 0, "sorted": 0}), ex((1, 5), 1, {"largest": 0}, output=1)]
    return tuple(out)


class _TopKRule(RangeRule):
    """attrs: ``axis`` (0-based sample axis), ``k``, ``sign`` (+1 largest, -1 smallest).
    Output ``(B, *shape)``: the input shape with ``axis`` of length ``k``."""

    def _ranges(self, bk, node, l, u):
        """Float64 ``(lo, hi) (B, M, n)`` of ``sign * x``, in the largest-first orientation."""
        a = node.attrs
        lo, hi = _np_rows(bk, l, a["axis"], a["sign"]), _np_rows(bk, u, a["axis"], a["sign"])
        return (lo, hi) if a["sign"] > 0 else (hi, lo)

    def _out(self, bk, node, z, like):
        """``(B, M, k)`` NumPy -> ``(B, *node.shape)`` in the backend and dtype of ``like``."""
        return from_rows(bk, bk.asarray(z, dtype=like.dtype), tuple(node.shape), node.attrs["axis"])


@register
class TopKValues(_TopKRule):
    op = "TopKValues"

    def forward(self, bk, node, x):
        a = node.attrs
        v = _np_rows(bk, x, a["axis"], a["sign"])
        top = np.take_along_axis(v, topk_order(v, a["k"]), axis=2)
        return self._out(bk, node, top * a["sign"], x)

    def _value_ranges(self, node, lo, hi):
        """Order statistics of ``(lo, hi) (B, M, n)`` (largest-first orientation) ->
        NumPy ``(low, high) (B, M, k)`` of the values, in the op's own sign."""
        k = node.attrs["k"]
        low, high = -np.sort(-lo, axis=2)[..., :k], -np.sort(-hi, axis=2)[..., :k]
        return (low, high) if node.attrs["sign"] > 0 else (-high, -low)

    def interval(self, bk, node, bounds):
        l, u = bounds
        low, high = self._value_ranges(node, *self._ranges(bk, node, l, u))
        return self._out(bk, node, low, l), self._out(bk, node, high, l)

    def relax(self, bk, node, bounds, strategy):
        """``(select, lower, upper)``: ``select (B, M, k, n)`` one-hot of the one candidate of
        a decided position (zero rows elsewhere); ``lower``/``upper`` ``(B, *node.shape)`` the
        constant lines of the undecided positions (zero at decided ones)."""
        (l, u), = bounds
        lo, hi = self._ranges(bk, node, l, u)
        cand = candidates(lo, hi, node.attrs["k"])
        decided = cand.sum(axis=3) == 1  # (B, M, k)
        select = (cand & decided[..., None]).astype(np.float64)
        low, high = self._value_ranges(node, lo, hi)
        # zero (not inf * 0) at decided positions, whose lines are the selected input itself
        return (bk.asarray(select, dtype=l.dtype), self._out(bk, node, np.where(decided, 0.0, low), l),
                self._out(bk, node, np.where(decided, 0.0, high), l))

    def _pick(self, bk, node, k, select):
        """``k (N, *in_shape)``, ``N`` a multiple of the batch ``B`` -> ``(N, *node.shape)``:
        each output position's selected input (zero where undecided)."""
        B = select.shape[0]
        rows = to_rows(bk, k, node.attrs["axis"])
        rows = bk.reshape(rows, (B, -1) + tuple(rows.shape[1:]))  # (B, N / B, M, n)
        picked = bk.einsum("bzmn,bmrn->bzmr", rows, select)
        return from_rows(bk, bk.reshape(picked, (k.shape[0],) + tuple(picked.shape[2:])), tuple(node.shape),
                         node.attrs["axis"])

    def forward_linear(self, bk, node, relax, maps):
        select, low, high = relax
        (m,) = maps
        B, n0 = m.Lk.shape[:2]
        in_shape = tuple(m.Lc.shape[1:])
        gk = lambda k: bk.reshape(self._pick(bk, node, bk.reshape(k, (B * n0,) + in_shape), select),  # noqa: E731
                                  (B, n0) + tuple(node.shape))
        return Maps(gk(m.Lk), self._pick(bk, node, m.Lc, select) + low,
                    gk(m.Uk), self._pick(bk, node, m.Uc, select) + high)

    def backward_linear(self, bk, node, step, AL, AU):
        select, low, high = step.relax
        in_shape, axis = tuple(step.in_shapes[0]), node.attrs["axis"]

        def side(A, upper):
            B, K = A.shape[:2]
            rows = to_rows(bk, bk.reshape(A, (B * K,) + tuple(node.shape)), axis)
            spread = bk.einsum("bzmr,bmrn->bzmn", bk.reshape(rows, (B, K) + tuple(rows.shape[1:])), select)
            coef = from_rows(bk, bk.reshape(spread, (B * K,) + tuple(spread.shape[2:])), in_shape, axis)
            small, big = (high, low) if upper else (low, high)
            return [bk.reshape(coef, (B, K) + in_shape)], bk.split_dot(flat(bk, A, 2), flat(bk, small, 1), flat(bk, big, 1))

        return each_side(AL, AU, side)

    def vjp(self, bk, node, g, xs, y):
        x = xs[0]
        a = node.attrs
        v = _np_rows(bk, x, a["axis"], a["sign"])
        idx = topk_order(v, a["k"])
        onehot = (np.arange(v.shape[2]) == idx[..., None]).astype(np.float64)  # (B, M, k, n)
        rows = to_rows(bk, g, a["axis"])
        spread = bk.einsum("bmr,bmrn->bmn", rows, bk.asarray(onehot, dtype=g.dtype))
        return [from_rows(bk, spread, tuple(x.shape[1:]), a["axis"])]


@register
class TopKIndices(_TopKRule):
    op = "TopKIndices"
    index_output = True

    def forward(self, bk, node, x):
        a = node.attrs
        v = _np_rows(bk, x, a["axis"], a["sign"])
        return self._out(bk, node, topk_order(v, a["k"]).astype(np.float64), x)

    def interval(self, bk, node, bounds):
        l, u = bounds
        lo, hi = self._ranges(bk, node, l, u)
        cand = candidates(lo, hi, node.attrs["k"])
        j = np.arange(lo.shape[2], dtype=np.float64)
        first = np.where(cand, j, np.inf).min(axis=3)
        last = np.where(cand, j, -np.inf).max(axis=3)
        return self._out(bk, node, first, l), self._out(bk, node, last, l)

    # the ONNX converters (TopK's two outputs: see _convert)
    @onnx_op("TopK", since=1, examples=_examples(False, False))
    def convert_topk_1(self, ctx, node, attrs, label):
        """Opsets 1-9: ``k`` is an attribute."""
        _convert(ctx, node, attrs, label, int(attrs["k"]))

    @onnx_op("TopK", since=10, examples=_examples(True, False))
    def convert_topk_10(self, ctx, node, attrs, label):
        """Opset 10: ``K`` is a constant input."""
        _convert(ctx, node, attrs, label, _k_input(ctx, node, label))

    @onnx_op("TopK", since=11, examples=_examples(True, True))
    def convert_topk_11(self, ctx, node, attrs, label):
        """Opsets 11+: ``largest`` and ``sorted``."""
        _convert(ctx, node, attrs, label, _k_input(ctx, node, label))


# ---- import ----------------------------------------------------------------------------------------
def _convert(ctx, node, attrs, label, k):
    x = node.input[0]
    shape = ctx.shape_of(x)
    rank = len(shape) + 1
    axis = int(attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 < axis < rank:
        fail(label, "TopK", f"axis {attrs.get('axis', -1)} is the batch axis or out of range (rank {rank})")
    n = shape[axis - 1]
    if not 1 <= k <= n:
        fail(label, "TopK", f"k = {k} must be between 1 and the axis length {n}")
    if not attrs.get("sorted", 1) and k > 1:
        fail(label, "TopK", "sorted = 0 leaves the order of the k outputs to the runtime (only k = 1 is supported)")
    sign = 1 if attrs.get("largest", 1) else -1
    out_shape = shape[:axis - 1] + (k,) + shape[axis:]
    src = [ctx.computed(x)]
    values, indices = (list(node.output) + ["", ""])[:2]
    if k == 1:
        if values:
            ctx.add(values, "ReduceMax", src, attrs={"axes": (axis - 1,), "keepdims": True, "sign": sign},
                    source=label, shape=out_shape)
        if indices:
            ctx.add(indices, "ArgMax", src, attrs={"axis": axis - 1, "keepdims": True, "last": False, "sign": sign},
                    source=label, shape=out_shape)
        return
    attrs_ir = {"axis": axis - 1, "k": int(k), "sign": sign}
    if values:
        ctx.add(values, "TopKValues", src, attrs=attrs_ir, source=label, shape=out_shape)
    if indices:
        ctx.add(indices, "TopKIndices", src, attrs=attrs_ir, source=label, shape=out_shape)


def _k_input(ctx, node, label):
    if len(node.input) < 2 or not node.input[1] or not ctx.is_const(node.input[1]):
        fail(label, "TopK", "K must be a constant")
    ks = np.asarray(ctx.const(node.input[1])).reshape(-1)
    if ks.size != 1:
        fail(label, "TopK", f"K must hold one value, got {ks.size}")
    return int(ks[0])
