"""Patches: backward coefficients of a ``(C, H, W)`` node that only cover each row's window.

A backward pass from one neuron of a convolutional layer only ever touches its receptive
field: at every node it reaches, row ``k``'s coefficients are zero outside a window of
``ph x pw`` positions. :class:`Patches` keeps that window only,

* ``data (B, K, C, ph, pw)`` -- row ``(b, k)``'s coefficients on a window of the node,
* ``top, left`` -- NumPy ints ``(B, U)`` (host side): rows come in ``U`` groups of
  ``G = K / U`` consecutive rows that share a window (a pass's rows from neurons at the same
  position keep the same window all the way), group ``u``'s window being rows ``top[b, u]
  .. top[b, u] + ph - 1`` and columns ``left[b, u] .. left[b, u] + pw - 1`` of the node.
  Windows may reach outside the node (where a convolution's zero padding is); every window
  has the same size,

so a pass costs per row what its receptive field holds instead of the whole layer, and what
a step reads of its own arrays (bounding lines, constants) is gathered once per group.

Invariant: coefficients outside the node are zero (:meth:`Patches.cleaned` makes them so
after a step that can put values there: a transposed convolution spreads into the padding).

How rules handle patches (:meth:`onnxverify.ops.base.OpRule.backward_patches`):
convolutions and average pools compose their kernel with each row's window (the window
grows by the kernel: ``top' = top * stride - pad``); elementwise rules read their bounding
lines at each row's window (:func:`take`); diagonal affine maps (per-channel affine /
BatchNorm, residual Add, Sub, Neg: any affine rule whose transpose is a per-position
scaling, detected numerically by the plan) scale the patch by their diagonal; MaxPool maps
it through its lines. Any other rule gets dense ``(B, K, C, H, W)`` coefficients
(:meth:`Patches.dense`), which is also what the engine does once a window covers its node
(dense is then no larger) or where a pass reaches the input or a forward-map cut.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Patches:
    data: object  # (B, K, C, ph, pw) backend array, K = U * G
    top: np.ndarray  # (B, U) int64
    left: np.ndarray  # (B, U) int64
    node_shape: tuple  # (C, H, W) of the node the coefficients are on

    @property
    def size(self) -> tuple:
        return tuple(self.data.shape[3:])

    @property
    def rows(self) -> int:
        return int(self.data.shape[1])

    @property
    def groups(self) -> int:
        return int(self.top.shape[1])

    @property
    def group(self) -> int:
        return self.rows // self.groups

    def grouped(self, bk, a=None):
        """``a`` (default: the data) ``(B, K, ...)`` viewed as ``(B, U, G, ...)``."""
        a = self.data if a is None else a
        return bk.reshape(a, (a.shape[0], self.groups, self.group) + tuple(a.shape[2:]))

    def ungrouped(self, bk, a):
        """Inverse of :meth:`grouped`."""
        return bk.reshape(a, (a.shape[0], self.rows) + tuple(a.shape[3:]))

    def like(self, data, top=None, left=None, node_shape=None) -> "Patches":
        """New patches with ``data`` and the given geometry (default: this one's)."""
        return Patches(data, self.top if top is None else top, self.left if left is None else left,
                       tuple(self.node_shape if node_shape is None else node_shape))

    def same_geometry(self, other: "Patches") -> bool:
        return (self.size == other.size and self.group == other.group
                and (self.top is other.top or np.array_equal(self.top, other.top))
                and (self.left is other.left or np.array_equal(self.left, other.left)))

    def row_geometry(self) -> tuple:
        """``(top, left)`` per row, ``(B, K)``."""
        G = self.group
        return np.repeat(self.top, G, axis=1), np.repeat(self.left, G, axis=1)

    def margins(self) -> tuple:
        """How far the windows reach outside the node: ``(top, bottom, left, right)`` >= 0."""
        (ph, pw), (H, W) = self.size, self.node_shape[1:]
        return (max(0, -int(self.top.min())), max(0, int((self.top + ph).max()) - H),
                max(0, -int(self.left.min())), max(0, int((self.left + pw).max()) - W))

    def inside(self) -> np.ndarray:
        """``(B, U, 1, 1, ph, pw)`` bool mask (NumPy) of the window positions inside the node."""
        (ph, pw), (H, W) = self.size, self.node_shape[1:]
        r = self.top[:, :, None] + np.arange(ph)
        c = self.left[:, :, None] + np.arange(pw)
        rows, cols = (r >= 0) & (r < H), (c >= 0) & (c < W)
        return (rows[:, :, :, None] & cols[:, :, None, :])[:, :, None, None]

    def cleaned(self, bk, owned: bool = False) -> "Patches":
        """The same coefficients with every position outside the node set to zero (with
        ``owned``, the caller's data may be overwritten: it has no other use)."""
        if not any(self.margins()):
            return self
        mask = bk.asarray(self.inside(), dtype=self.data.dtype)
        A = self.grouped(bk)
        return self.like(self.ungrouped(bk, bk.scaled_owned(A, mask) if owned else A * mask))

    def covers_node(self) -> bool:
        """The window is at least as large as the node: dense coefficients are no larger."""
        (ph, pw), (H, W) = self.size, self.node_shape[1:]
        return ph * pw >= H * W

    def dense(self, bk):
        """``(B, K, C, H, W)`` coefficients, zero outside each row's window."""
        (C, H, W) = self.node_shape
        pt, pb, pl, pr = self.margins()
        top, left = self.row_geometry()
        full = bk.put_windows(self.data, top + pt, left + pl, (H + pt + pb, W + pl + pr))
        return full[:, :, :, pt:pt + H, pl:pl + W] if (pt or pb or pl or pr) else full

    def dot(self, bk, const):
        """``<row, const>`` per row, ``(B, K)``, for a constant ``(B or 1, C, H, W)``."""
        return inner(bk, self, self.grouped(bk), take(bk, const, self))


def inner(bk, P: Patches, A, t):
    """Per-row ``<A, t>``: ``A (B, U, G, C, ph, pw)`` (grouped rows of ``P``), ``t`` what
    :func:`take` read (``(B, U, 1 or G, ...)``) -> ``(B, K)``."""
    B, U, G = A.shape[:3]
    a = bk.reshape(A, (B, U, G, -1))
    if t.shape[2] == 1:
        out = bk.einsum("bugx,bux->bug", a, bk.reshape(t, (B, U, -1)))
    else:
        out = bk.einsum("bugx,bugx->bug", a, bk.reshape(t, (B, U, G, -1)))
    return bk.reshape(out, (B, U * G))


def take(bk, x, P: Patches):
    """``x`` read at the windows of ``P``, zero outside the node: ``x`` ``(B or 1, C, H, W)``
    (shared by all rows: read once per group, ``(B, U, 1, C, ph, pw)``) or ``(B, K, C, H, W)``
    (one per row: ``(B, U, G, C, ph, pw)``)."""
    B, U = P.top.shape
    pt, pb, pl, pr = P.margins()
    lead = x.ndim - 3
    if pt or pb or pl or pr:
        x = bk.pad(x, [(0, 0)] * lead + [(0, 0), (pt, pb), (pl, pr)])
    if lead == 1:  # each distinct window once, then copied to the groups that share it
        Hp, Wp = x.shape[-2:]
        b = np.broadcast_to(np.arange(B)[:, None] if x.shape[0] == B else np.zeros((B, 1), np.int64), P.top.shape)
        keys = ((b * Hp) + (P.top + pt)) * Wp + (P.left + pl)
        uniq, inv = np.unique(keys.reshape(-1), return_inverse=True)
        ub, rest = np.divmod(uniq, Hp * Wp)
        ut, ul = np.divmod(rest, Wp)
        wins = bk.take_windows(x, ub[None, :], ut[None, :], ul[None, :], P.size)[0]  # (distinct, C, ph, pw)
        inv = inv.reshape(-1)
        if len(uniq) < B * U or np.any(inv != np.arange(B * U)):  # np.unique sorts the keys
            wins = wins[bk.index(inv)]
        return bk.reshape(wins, (B, U, 1) + tuple(wins.shape[1:]))
    top, left = P.row_geometry()
    return P.grouped(bk, bk.take_windows(x, None, top + pt, left + pl, P.size))


def stack(bk, PL: Patches, PU: Patches | None) -> Patches:
    """Lower and upper patches as one set of ``2K`` rows (one kernel call for both)."""
    if PU is None or PU is PL:
        return PL
    return PL.like(bk.concat([PL.data, PU.data], axis=1), np.concatenate([PL.top, PU.top], axis=1),
                   np.concatenate([PL.left, PU.left], axis=1))


def split(P, PL: Patches, PU: Patches | None):
    """Inverse of :func:`stack` for a result ``P`` (patches or a dense array)."""
    if PU is None:
        return P, None
    if PU is PL:
        return P, P
    K, U = PL.rows, PL.groups
    if isinstance(P, Patches):
        return (P.like(P.data[:, :K], P.top[:, :U], P.left[:, :U]),
                P.like(P.data[:, K:], P.top[:, U:], P.left[:, U:]))
    return P[:, :K], P[:, K:]


def union(bk, P: Patches, Q: Patches):
    """``P`` and ``Q`` (same node, same rows) on one common window per group: the pair
    re-expressed, or None when that window covers the node (go dense)."""
    top, left = np.minimum(P.top, Q.top), np.minimum(P.left, Q.left)
    ph = int((np.maximum(P.top + P.size[0], Q.top + Q.size[0]) - top).max())
    pw = int((np.maximum(P.left + P.size[1], Q.left + Q.size[1]) - left).max())
    H, W = P.node_shape[1:]
    if ph * pw >= H * W or P.group != Q.group:
        return None

    def place(R):
        if R.size == (ph, pw) and np.array_equal(R.top, top) and np.array_equal(R.left, left):
            return R
        G = R.group
        off_t, off_l = np.repeat(R.top - top, G, axis=1), np.repeat(R.left - left, G, axis=1)
        return R.like(bk.put_windows(R.data, off_t, off_l, (ph, pw)), top, left)

    return place(P), place(Q)


def add(bk, P: Patches, Q: Patches):
    """``P + Q`` as patches, or dense ``(B, K, C, H, W)`` when their union covers the node."""
    if P.same_geometry(Q):
        return P.like(P.data + Q.data)
    both = union(bk, P, Q)
    if both is None:
        return P.dense(bk) + Q.dense(bk)
    return both[0].like(both[0].data + both[1].data)


def unit_rows(mask: np.ndarray, group: int):
    """The rows of patch passes for the True neurons of ``mask (B, C, H, W)``: neurons at the
    same position in groups of at most ``group`` rows (one shared window per group), groups
    padded with invalid rows. Returns ``idx (B, U * G)`` flat neuron indices, ``valid (B, U *
    G)`` bool and ``pos (B, U)`` the flat position ``r * W + c`` of each group."""
    B, C, H, W = mask.shape
    G = max(1, int(group))
    per_b = []
    for b in range(B):
        c, p = np.nonzero(mask[b].reshape(C, H * W))
        order = np.lexsort((c, p))
        c, p = c[order], p[order]
        if len(p) == 0:
            per_b.append((c, p, p, p))
            continue
        first = np.r_[0, np.flatnonzero(np.diff(p)) + 1]
        rank = np.arange(len(p)) - np.repeat(first, np.diff(np.r_[first, len(p)]))
        new = np.r_[True, (p[1:] != p[:-1]) | (rank[1:] // G != rank[:-1] // G)]
        per_b.append((c, p, np.cumsum(new) - 1, rank % G))
    U = max(1, max(int(gid.max()) + 1 if len(gid) else 0 for _, _, gid, _ in per_b))
    idx = np.zeros((B, U, G), np.int64)
    valid = np.zeros((B, U, G), bool)
    pos = np.zeros((B, U), np.int64)
    for b, (c, p, gid, slot) in enumerate(per_b):
        idx[b, gid, slot] = c * H * W + p
        valid[b, gid, slot] = True
        pos[b, gid] = p
    return idx.reshape(B, U * G), valid.reshape(B, U * G), pos


def unit_patches(bk, idx, valid, pos, node_shape, dtype) -> Patches:
    """Rows ``idx (B, K)`` (flat neuron indices; ``valid`` marks real rows) in groups at the
    flat positions ``pos (B, U)`` of a ``(C, H, W)`` node as 1 x 1 patches: the identity."""
    C, H, W = node_shape
    B, K = idx.shape
    data = np.zeros((B, K, C, 1, 1))
    bi, ki = np.nonzero(valid)
    data[bi, ki, idx[bi, ki] // (H * W), 0, 0] = 1.0
    top, left = np.divmod(pos, W)
    return Patches(bk.asarray(data, dtype=dtype), top.astype(np.int64), left.astype(np.int64), tuple(node_shape))


def transposed(bk, P: Patches, data, stride, pads, in_shape) -> Patches:
    """Patches on a window op's input from the transposed op's output ``data (B*K or B, K,
    C', ph', pw')`` on each row's isolated window: output row ``r`` reads input rows from
    ``r * stride - pad``, so the input window starts at ``top * stride - pad``; positions in
    the padding are zeroed (the invariant)."""
    B, K = P.data.shape[:2]
    data = data if data.ndim == 5 else bk.reshape(data, (B, K) + tuple(data.shape[1:]))
    out = Patches(data, P.top * stride[0] - pads[0], P.left * stride[1] - pads[1], tuple(in_shape))
    return out.cleaned(bk, owned=True)
