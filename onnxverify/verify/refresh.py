"""Tightening a batch of subdomains' intermediate bounds after their splits.

A split neuron's relaxation is exact on its piece, so the layers after a subdomain's first
split can get tighter bounds than the root's: :func:`refreshed_bounds` re-bounds them by
CROWN backward passes. An interval that comes out empty (:func:`crossed`) proves its
subdomain holds no input.

Shapes: ``B`` subdomains; bounds are ``{name: (lo, hi)}`` NumPy ``(B, *shape)``.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_backend
from ..bounds.engine import LinearEngine
from ..bounds.passes import backward_undecided, default_max_memory, itemsize
from ..specs.input_sets import Box

__all__ = ["crossed", "refreshed_bounds"]


def crossed(lo, hi):
    """``(B,)``: subdomains where some interval of ``lo, hi (B, *shape)`` is empty beyond
    rounding (``lo > hi``)."""
    B = lo.shape[0]
    gap = (lo - hi).reshape(B, -1)
    return (gap > 1e-9 * (1 + np.abs(hi).reshape(B, -1))).any(axis=1)


def refreshed_bounds(P, bounds, empty, splits, max_memory=None):
    """``bounds`` (from :meth:`~onnxverify.verify.beta.BabProblem.clamped_bounds` of the
    problem ``P``) with the split nodes after each subdomain's first split re-bounded by
    CROWN backward passes (their undecided neurons only). ``empty (B,)``: subdomains already
    known empty; ``splits``: as in :class:`~onnxverify.verify.beta.DomainBatch`. Returns
    ``(bounds, empty)``; every interval holds for every input of its subdomain (the passes'
    lines are valid on it)."""
    node = splits[0]
    used = node[node >= 0]
    if not len(used):
        return bounds, empty
    later = P.split_nodes[int(used.min()) + 1:]
    if not later:
        return bounds, empty
    g = P.graph
    B = len(empty)
    dtype = np.dtype(P.dtype)
    env = {g.input.name: P.input_box(B), **bounds}
    eng = LinearEngine(g, Box(*env[g.input.name]), get_backend("numpy"), dtype, P.strategy, env)
    eng.bounds.update({k: (np.asarray(lo, dtype=dtype), np.asarray(hi, dtype=dtype)) for k, (lo, hi) in env.items()})
    eng.max_memory = max_memory or default_max_memory()
    eng.itemsize, eng.out_depth = itemsize(dtype), None
    out, empty = dict(bounds), empty.copy()
    for name in later:
        backward_undecided(eng, name, None, eng.max_memory, eng.itemsize)
        lo, hi = (np.asarray(v, dtype=np.float64) for v in eng.best(name))
        empty |= crossed(lo, hi)
        out[name] = (lo, np.maximum(hi, lo))
    if empty.any():
        out, _ = P.restore_empty(out, empty, B)
    return out, empty
