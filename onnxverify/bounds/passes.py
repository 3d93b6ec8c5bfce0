"""Backward passes in bulk: chunked over rows under a memory limit, one per undecided neuron,
and tiled over spatial windows for conv layers. Which neurons need passes is the rules'
business (``undecided``); nothing here names an op."""
from __future__ import annotations

import os

import numpy as np

from ..errors import MemoryLimitError
from ..ops import rule_of
from ..ops.patches import unit_patches, unit_rows
from .backward import backward


def default_max_memory() -> int:
    """60% of physical memory."""
    try:
        return int(0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def itemsize(dtype) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # a torch dtype
        return dtype.itemsize


def gb(x) -> str:
    return f"{x / 2**30:.2f} GB"


def bound_nodes(graph) -> list:
    """Names of nodes whose bounds a relaxation needs (inputs of nonlinear nodes), in order."""
    need = {i for n in graph.computed if not rule_of(n).affine for i in n.inputs}
    return [n.name for n in graph.nodes if n.name in need]


def undecided_mask(bk, graph, name: str, lo, hi):
    """Neurons of bound node ``name`` that some consumer does not follow linearly on
    ``[lo, hi]`` (bool ``(B, *shape)``; None when there are none): only those need passes."""
    mask = None
    for c in graph.consumers()[name]:
        for index, i in enumerate(c.inputs):
            if i == name:
                m = rule_of(c).undecided(bk, c, lo, hi, index)
                if m is not None:
                    mask = m if mask is None else (mask | m)
    return mask


def rows_per_chunk(eng, start, max_memory, itemsize):
    """Rows of a backward pass that fit in ``max_memory``: per row, a few arrays of the
    largest ancestor's size plus the im2col buffer of the widest kernel (kh * kw copies)."""
    biggest, kernel = eng.plan.extent(start)
    per_row = eng.B * max(biggest, eng.n0) * itemsize * (8 + 2 * kernel)
    rows = int(max_memory // max(per_row, 1))
    if rows < 1:
        raise MemoryLimitError(f"one backward row from {start} needs about {gb(per_row)}, over the memory limit "
                               f"{gb(max_memory)}")
    return rows


def chunked_backward(eng, start, lam, depth, max_memory, itemsize):
    bk = eng.bk
    K = lam.shape[1]
    step = rows_per_chunk(eng, start, max_memory, itemsize)
    if step >= K:
        return backward(eng, start, lam, depth)
    los, his = [], []
    for k in range(0, K, step):
        lo, hi = backward(eng, start, lam[:, k:k + step], depth)
        los.append(lo)
        his.append(hi)
    return bk.concat(los, axis=1), bk.concat(his, axis=1)


TILE_ROWS = 512  # rows per windowed backward pass (a spatial tile times the channels)
#: passes from the neurons of a ``(C, H, W)`` node whose rule handles patches start as
#: identity patches (:mod:`onnxverify.ops.patches`); False: one-hot rows or tiles
PATCHES = True
#: rows of a patch pass per shared window: neurons at one position of the start node go in
#: groups of this many (what a step reads of its own arrays is gathered once per group;
#: padding a position's last group with zero rows costs up to this many - 1 rows)
PATCH_GROUP = 8


def backward_undecided(eng, name, depth, max_memory, itemsize):
    """Tighten the bounds of ``name`` by backward passes for its undecided neurons."""
    bk, g = eng.bk, eng.g
    lo, hi = eng.best(name)
    mask = undecided_mask(bk, g, name, lo, hi)
    if mask is None:
        return
    flat = np.asarray(bk.to_numpy(bk.reshape(mask, (eng.B, -1))))
    if not flat.any():
        return
    shape = tuple(g[name].shape)
    if PATCHES and len(shape) == 3 and shape[1] * shape[2] > 1 and bk.name in ("numpy", "torch") and (
            eng.plan.rules[name].patches or eng.plan.diagonal(name)):
        backward_patches(eng, name, depth, flat, max_memory, itemsize)
        return
    many = flat.sum(axis=1).max() > 2 * TILE_ROWS  # few rows: one dense pass is cheaper than many small ones
    if many and len(shape) == 3 and shape[1] * shape[2] > 1 and bk.name in ("numpy", "cupy"):
        backward_tiles(eng, name, depth, flat.reshape((eng.B,) + shape), max_memory, itemsize)
        return
    K = int(flat.sum(axis=1).max())
    N = flat.shape[1]
    idx = np.zeros((eng.B, K), dtype=np.int64)
    valid = np.zeros((eng.B, K))
    for b in range(eng.B):
        nz = np.flatnonzero(flat[b])
        idx[b, : len(nz)] = nz
        valid[b, : len(nz)] = 1.0
    step = rows_per_chunk(eng, name, max_memory, itemsize)
    new_lo, new_hi = bk.reshape(lo, (eng.B, N)), bk.reshape(hi, (eng.B, N))
    for k in range(0, K, step):
        sl = slice(k, min(K, k + step))
        onehot = np.zeros((eng.B, sl.stop - sl.start, N))
        for b in range(eng.B):
            onehot[b, np.arange(sl.stop - sl.start), idx[b, sl]] = valid[b, sl]
        lam = bk.asarray(onehot, dtype=eng.dtype)
        first = _unit_first_step(eng, name, idx[:, sl], valid[:, sl])
        if first is None:
            l_k, h_k = backward(eng, name, bk.reshape(lam, (eng.B, sl.stop - sl.start) + shape), depth)
        else:  # the rows through the start node's rule directly (a gather for Linear), then on
            A, bias = first
            l_k, h_k = backward(eng, eng.g[name].inputs[0], A, depth)
            l_k, h_k = l_k + bias, h_k + bias
        hit = bk.sum(lam, axis=1) > 0
        new_lo = bk.where(hit, bk.maximum(new_lo, bk.einsum("bk,bkn->bn", l_k, lam)), new_lo)
        new_hi = bk.where(hit, bk.minimum(new_hi, bk.einsum("bk,bkn->bn", h_k, lam)), new_hi)
    eng.tighten(name, bk.reshape(new_lo, (eng.B,) + shape), bk.reshape(new_hi, (eng.B,) + shape))


def backward_patches(eng, name, depth, flat, max_memory, itemsize):
    """Backward passes for the undecided neurons ``flat (B, N)`` of a ``(C, H, W)`` node,
    starting as identity patches (1 x 1 windows): each pass touches the receptive field of
    its row only, until a window covers its node. Rows are chunked by the dense estimate
    (:func:`rows_per_chunk`: a pass may go dense on the way)."""
    bk, B = eng.bk, eng.B
    shape = tuple(eng.g[name].shape)
    idx, valid, pos = unit_rows(flat.reshape((B,) + shape), PATCH_GROUP)
    G = idx.shape[1] // pos.shape[1]
    U = pos.shape[1]
    step = max(1, rows_per_chunk(eng, name, max_memory, itemsize) // G)  # groups per pass
    lo, hi = eng.best(name)
    new_lo, new_hi = bk.reshape(lo, (B, -1)), bk.reshape(hi, (B, -1))
    for u in range(0, U, step):
        gs = slice(u, min(U, u + step))
        sl = slice(gs.start * G, gs.stop * G)
        lam = unit_patches(bk, idx[:, sl], valid[:, sl], pos[:, gs], shape, eng.dtype)
        l_k, h_k = backward(eng, name, lam, depth)
        bi, ki = np.nonzero(valid[:, sl])
        at = idx[:, sl][bi, ki]
        tb, tk, tp = bk.index(bi), bk.index(ki), bk.index(at)
        new_lo = bk.put_rows(new_lo, bi, at, bk.maximum(new_lo[tb, tp], l_k[tb, tk]))
        new_hi = bk.put_rows(new_hi, bi, at, bk.minimum(new_hi[tb, tp], h_k[tb, tk]))
    eng.tighten(name, bk.reshape(new_lo, (B,) + shape), bk.reshape(new_hi, (B,) + shape))


def _unit_first_step(eng, name, idx, valid):
    """The first step of the passes from unit rows ``idx (B, K)`` of affine node ``name``
    (one input) by its rule's :meth:`~onnxverify.ops.generic.AffineRule.adjoint_rows`:
    ``(coefficients (B, K, *in_shape), bias (B, K))``, or None (no shortcut)."""
    node, rule, bk = eng.g[name], eng.plan.rules[name], eng.bk
    if not rule.affine or len(node.inputs) != 1:
        return None
    rows = rule.adjoint_rows(bk, node, idx, eng.plan.in_shapes[name], eng.dtype)
    if rows is None:
        return None
    A = rows[0]
    mask = bk.asarray(valid.reshape(valid.shape + (1,) * (A.ndim - 2)), dtype=eng.dtype)
    off = bk.reshape(eng.offset(name), (-1,))
    return A * mask, off[bk.asarray(idx)] * bk.asarray(valid, dtype=eng.dtype)


def backward_tiles(eng, name, depth, mask, max_memory, itemsize):
    """Backward passes for the undecided neurons of a ``(C, H, W)`` node, one spatial tile at
    a time: each pass only touches the tile's receptive field (see LinearEngine.backward)."""
    bk = eng.bk
    B, (C, H, W) = eng.B, mask.shape[1:]
    T = max(1, int(np.sqrt(max(1, TILE_ROWS // C))))
    step = max(1, min(rows_per_chunk(eng, name, max_memory, itemsize) * 4, 4 * TILE_ROWS))
    lo, hi = (np.array(bk.to_numpy(a), dtype=np.float64).reshape(B, -1) for a in eng.best(name))
    for r0 in range(0, H, T):
        for c0 in range(0, W, T):
            r1, c1 = min(H, r0 + T), min(W, c0 + T)
            sub = mask[:, :, r0:r1, c0:c1].reshape(B, -1)
            counts = sub.sum(axis=1)
            if counts.max() == 0:
                continue
            h, w = r1 - r0, c1 - c0
            local = [np.flatnonzero(sub[b]) for b in range(B)]
            for k in range(0, int(counts.max()), step):
                rows = [loc[k:k + step] for loc in local]
                kk = max(len(r) for r in rows)
                onehot = np.zeros((B, kk, C * h * w))
                for b, r in enumerate(rows):
                    onehot[b, np.arange(len(r)), r] = 1.0
                lam = bk.asarray(onehot.reshape(B, kk, C, h, w), dtype=eng.dtype)
                l_k, h_k = (np.asarray(bk.to_numpy(v), dtype=np.float64)
                            for v in backward(eng, name, lam, depth, window=(r0, r1, c0, c1)))
                for b, r in enumerate(rows):
                    ch, rem = np.divmod(r, h * w)
                    gidx = ch * H * W + (r0 + rem // w) * W + (c0 + rem % w)
                    lo[b, gidx] = np.maximum(lo[b, gidx], l_k[b, :len(r)])
                    hi[b, gidx] = np.minimum(hi[b, gidx], h_k[b, :len(r)])
    shape = (B, C, H, W)
    eng.tighten(name, bk.asarray(lo.reshape(shape), dtype=eng.dtype), bk.asarray(hi.reshape(shape), dtype=eng.dtype))
