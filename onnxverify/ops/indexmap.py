"""Constant index maps: every output value is a fixed weighted sum of input values (plus a
constant). The shared machinery of Gather, GatherElements, Expand, Tile, Where, ScatterND
and Resize (each of those modules registers its own IR op on :class:`IndexMapRule`).

A map of ``k`` computed inputs ``x_1 .. x_k`` (flattened C-order and concatenated into one
vector ``z`` of length ``N``) to an output of ``n_out`` values with ``T`` taps::

    y[j] = sum_t weight[t, j] * z[index[t, j]]  +  fill[j]

``index (T, n_out)`` int64 (``N`` means "no input": that tap reads 0), ``weight (T, n_out)``
(absent: all ones), ``fill (n_out,)`` (absent: zeros) and ``pads`` (some tap reads nothing)
are node params. Selections (Gather,
Tile, ...) have ``T = 1`` and no weights; linear Resize has ``2^d`` taps, cubic ``4^d``.

The adjoint is a gather as well: ``inv_index (D, N)`` lists, for every input position, the
output positions that read it (``D`` the largest number of readers; ``n_out`` pads), with
``inv_weight``. Both directions are plain fancy indexing along the last axis, which NumPy,
CuPy and torch (autograd included) all support, so no scatter kernel is needed.
"""
from __future__ import annotations

import numpy as np

from .generic import AffineRule
from .importing import fail

#: an inverse index larger than this many entries (and than 16x the map) is refused
_MAX_INVERSE = 2 ** 26


def ids_like(shape, start: int = 0) -> np.ndarray:
    """``arange`` ids of a tensor of ``shape`` (C-order), starting at ``start``."""
    return np.arange(start, start + int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)


def inverse(index: np.ndarray, weight, n_in: int):
    """``(inv_index (D, n_in), inv_weight (D, n_in) or None)`` of a map ``index (T, n_out)``:
    the output positions (and weights) reading each input position; ``n_out`` pads."""
    T, n_out = index.shape
    tgt = index.reshape(-1)
    pos = np.tile(np.arange(n_out, dtype=np.int64), T)
    w = None if weight is None else np.asarray(weight, np.float64).reshape(-1)
    keep = tgt < n_in
    tgt, pos = tgt[keep], pos[keep]
    w = None if w is None else w[keep]
    counts = np.bincount(tgt, minlength=n_in)
    D = max(int(counts.max()) if counts.size else 0, 1)
    if D * n_in > max(_MAX_INVERSE, 16 * T * n_out):
        return None, None
    order = np.argsort(tgt, kind="stable")
    tgt, pos = tgt[order], pos[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(tgt)) - starts[tgt]
    inv = np.full((D, n_in), n_out, dtype=np.int64)
    inv[rank, tgt] = pos
    inv_w = None
    if w is not None:
        inv_w = np.zeros((D, n_in))
        inv_w[rank, tgt] = w[order]
    return inv, inv_w


def _gather_taps(bk, flat, index, weight, absolute: bool):
    """``sum_t weight_t * flat[:, index_t]``: flat ``(M, N + 1)`` (last column zero) -> ``(M, n)``."""
    out = None
    for t in range(index.shape[0]):
        term = flat[:, index[t]]
        if weight is not None:
            w = weight[t]
            term = term * (bk.abs(w) if absolute else w)
        out = term if out is None else out + term
    return out


class IndexMapRule(AffineRule):
    """Base of the index-map IR ops (not registered itself). params: ``index``, optional
    ``weight``, ``fill``, and the adjoint's ``inv_index`` / ``inv_weight``; the output shape
    is ``node.shape``."""

    def _flat(self, bk, xs, pad: bool):
        M = xs[0].shape[0]
        parts = [bk.reshape(x, (M, -1)) for x in xs]
        if pad:
            parts.append(bk.zeros((M, 1), dtype=parts[0].dtype))
        return parts[0] if len(parts) == 1 else bk.concat(parts, axis=1)

    def _weights(self, bk, node, key, dtype):
        w = node.params.get(key)
        return None if w is None else bk.const(w, dtype)

    def apply(self, bk, node, *xs, bias=True):
        return self._apply(bk, node, xs, bias, absolute=False)

    def apply_abs(self, bk, node, *xs):
        return self._apply(bk, node, xs, False, absolute=True)

    def _apply(self, bk, node, xs, bias, absolute):
        p = node.params
        flat = self._flat(bk, xs, pad=bool(p["pads"]))
        index = bk.const(p["index"], np.int64)
        y = _gather_taps(bk, flat, index, self._weights(bk, node, "weight", flat.dtype), absolute)
        if bias and "fill" in p:
            y = y + bk.const(p["fill"], flat.dtype)
        return bk.reshape(y, (flat.shape[0],) + tuple(node.shape))

    def adjoint(self, bk, node, A, in_shapes):
        p = node.params
        M = A.shape[0]
        flat = bk.concat([bk.reshape(A, (M, -1)), bk.zeros((M, 1), dtype=A.dtype)], axis=1)
        z = _gather_taps(bk, flat, bk.const(p["inv_index"], np.int64),
                         self._weights(bk, node, "inv_weight", A.dtype), absolute=False)
        out, start = [], 0
        for s in in_shapes:
            n = int(np.prod(s, dtype=np.int64))
            out.append(bk.reshape(z[:, start:start + n], (M,) + tuple(s)))
            start += n
        return out


def add_index_map(ctx, onnx_out, op, inputs, index, label, out_shape, weight=None, fill=None):
    """Append an index-map IR node ``op`` computing ONNX tensor ``onnx_out``.

    ``inputs``: ONNX names of the computed operands; ``index``: ints of shape
    ``(T, *out_shape)`` or ``out_shape`` into their concatenated flattened values, ``-1``
    where a tap reads nothing (a constant position: ``fill``); ``weight`` like ``index``;
    ``fill`` broadcastable to ``out_shape`` (the constants added). An identity selection
    becomes a plain Reshape."""
    sizes = [int(np.prod(ctx.shape_of(i), dtype=np.int64)) for i in inputs]
    n_in = sum(sizes)
    out_shape = tuple(int(d) for d in out_shape)
    n_out = int(np.prod(out_shape, dtype=np.int64))
    if n_out == 0:
        fail(label, op, f"the output would be empty (shape {out_shape})")
    taps = np.asarray(index, dtype=np.int64).reshape((-1, n_out))
    if taps.max() >= n_in or taps.min() < -1:
        fail(label, op, "index map out of range (internal error)")
    pads = bool((taps < 0).any())
    taps = np.where(taps < 0, n_in, taps)
    wt = None if weight is None else np.asarray(weight, dtype=np.float64).reshape(taps.shape)
    if wt is not None and np.all(wt == 1.0):
        wt = None
    const = None if fill is None else np.broadcast_to(np.asarray(fill, dtype=np.float64), out_shape).copy()
    if const is not None and not np.any(const):
        const = None
    if (len(inputs) == 1 and taps.shape[0] == 1 and wt is None and const is None and not pads
            and n_out == n_in and np.array_equal(taps[0], np.arange(n_in))):
        return ctx.add(onnx_out, "Reshape", [ctx.computed(inputs[0])], source=label, shape=out_shape)
    inv, inv_w = inverse(taps, wt, n_in)
    if inv is None:
        fail(label, op, "the index map reads some input positions too often for its adjoint (more than 16x "
                        "the output size): not supported")
    params = {"index": taps, "inv_index": inv, "pads": np.array(pads)}
    if wt is not None:
        params["weight"], params["inv_weight"] = wt, inv_w
    if const is not None:
        params["fill"] = const.reshape(-1)
    return ctx.add(onnx_out, op, [ctx.computed(i) for i in inputs], params, source=label, shape=out_shape)
