"""``ScatterND`` with constant indices: ``data`` with the slices at ``indices`` replaced by
(or, ``reduction="add"``, increased by) ``updates``; data and updates may each be computed or
constant. An index map (:mod:`.indexmap`): one tap for the data, one more per update that
lands on a position (``add``)."""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .gather import constant_indices
from .importing import fail, text
from .indexmap import IndexMapRule, add_index_map
from .registry import register
from .where import operand_ids

_I64 = np.int64


@register
class ScatterND(IndexMapRule):
    """``y = data`` with updates written (or added) at constant positions."""

    op = "ScatterND"

    def _scatter(self, ctx, node, reduction, label):
        data, ind, upd = node.input[:3]
        idx = constant_indices(ctx, ind, label, "ScatterND")
        full = np.shape(ctx.const(data)) if ctx.is_const(data) else (1,) + ctx.shape_of(data)
        k = idx.shape[-1] if idx.ndim else 0
        if idx.ndim < 1 or not 1 <= k <= len(full):
            fail(label, "ScatterND", f"indices of shape {idx.shape} do not address a tensor of rank {len(full)}")
        if not full or full[0] != 1:
            fail(label, "ScatterND", f"data of shape {full} varies along the batch axis")
        upd_full = tuple(idx.shape[:-1]) + tuple(full[k:])
        upd_actual = np.shape(ctx.const(upd)) if ctx.is_const(upd) else (1,) + ctx.shape_of(upd)
        if tuple(upd_actual) != upd_full:
            fail(label, "ScatterND", f"updates have shape {tuple(upd_actual)}, the indices expect {upd_full}")
        dims = np.array(full[:k])
        idx = np.where(idx < 0, idx + dims, idx)
        if np.any(idx < 0) or np.any(idx >= dims):
            fail(label, "ScatterND", "indices out of range")
        if np.any(idx[..., 0] != 0):
            fail(label, "ScatterND", "indices address a batch entry other than 0 (scattering across samples)")
        (d_ids, d_fill), (u_ids, u_fill) = [(np.array(i), np.array(f)) for i, f in operand_ids(
            ctx, [data, upd], None, label, "ScatterND", shapes=(full, upd_full))[0]]
        computed = [n for n in (data, upd) if not ctx.is_const(n)]
        n_out = int(np.prod(full, dtype=np.int64))
        # linear output position of every update value
        pos = np.ravel_multi_index(tuple(np.moveaxis(idx, -1, 0)), full[:k])  # idx.shape[:-1]
        inner = int(np.prod(full[k:], dtype=np.int64))
        pos = (pos[..., None] * inner + np.arange(inner)).reshape(-1)
        u_ids, u_fill = u_ids.reshape(-1), u_fill.reshape(-1)
        d_ids, d_fill = d_ids.reshape(-1), d_fill.reshape(-1)
        if reduction == "none":
            ids, fill = d_ids.copy(), d_fill.copy()
            ids[pos], fill[pos] = u_ids, u_fill  # (duplicate positions: the last one wins, like onnxruntime)
            taps = ids[None]
        elif reduction == "add":
            order = np.argsort(pos, kind="stable")
            pos, u_ids, u_fill = pos[order], u_ids[order], u_fill[order]
            counts = np.bincount(pos, minlength=n_out)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rank = np.arange(len(pos)) - starts[pos]
            taps = np.full((1 + int(counts.max()), n_out), -1, dtype=np.int64)
            taps[0] = d_ids
            taps[1 + rank, pos] = u_ids
            fill = d_fill.copy()
            np.add.at(fill, pos, u_fill)
        else:
            fail(label, "ScatterND", f"reduction={reduction!r} is not supported (only 'none' and 'add')")
        add_index_map(ctx, node.output[0], "ScatterND", computed, taps.reshape((-1,) + tuple(full[1:])), label,
                      full[1:], fill=fill.reshape(full[1:]))

    @onnx_op("ScatterND", since=11, examples=(
        Example(((1, 4, 3), np.array([[[0, 2], [0, 0]]], _I64), (1, 2, 3))),
        Example(((1, 3, 4), np.array([[0, 1, 3], [0, 2, 0]], _I64), np.array([5.0, -1.0], np.float32))),
        Example((np.zeros((1, 2, 3), np.float32), np.array([[[0, 1]]], _I64), (1, 1, 3))),
    ))
    def convert(self, ctx, node, attrs, label):
        self._scatter(ctx, node, "none", label)

    @onnx_op("ScatterND", since=16, examples=(
        Example(((1, 4, 3), np.array([[[0, 2], [0, 2], [0, 1]]], _I64), (1, 3, 3)), {"reduction": "add"}),
        Example(((1, 4, 3), np.array([[[0, 3]]], _I64), (1, 1, 3))),
    ))
    def convert_reduction(self, ctx, node, attrs, label):
        self._scatter(ctx, node, text(attrs.get("reduction", "none")), label)
