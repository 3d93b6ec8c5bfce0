"""Output specifications: rows of linear functions ``C y`` of the (flattened) output."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def margin_spec(labels, n_classes: int) -> np.ndarray:
    """Margin matrices ``e_y - e_j`` for ``j != y``: ``(batch, n_classes - 1, n_classes)``.

    A sample is verified robust when every row's lower bound is > 0.
    """
    labels = np.atleast_1d(np.asarray(labels, dtype=np.int64))
    if (labels < 0).any() or (labels >= n_classes).any():
        raise InputError(f"label(s) {labels.tolist()} out of range for {n_classes} outputs")
    C = np.zeros((len(labels), n_classes - 1, n_classes))
    for b, y in enumerate(labels):
        others = [j for j in range(n_classes) if j != y]
        C[b, np.arange(n_classes - 1), y] = 1.0
        C[b, np.arange(n_classes - 1), others] = -1.0
    return C


def check_spec(C, batch: int, n_out: int) -> np.ndarray:
    """Validate ``C``: ``(K, n_out)`` (shared) or ``(batch, K, n_out)``; returns the latter."""
    C = np.asarray(C, dtype=np.float64)
    if not np.isfinite(C).all():
        raise InputError("spec matrix contains NaN/Inf")
    if C.ndim == 2:
        C = np.broadcast_to(C, (batch,) + C.shape)
    if C.ndim != 3 or C.shape[-1] != n_out or C.shape[0] not in (1, batch):
        raise InputError(f"spec matrix has shape {C.shape}; expected (K, {n_out}) or ({batch}, K, {n_out})")
    return np.broadcast_to(C, (batch,) + C.shape[1:])


def apply_spec_to_interval(bk, C, lo, hi):
    """Interval of ``C y`` for ``y`` in ``[lo, hi]``: C ``(B, K, n)``, lo/hi ``(B, n)`` -> ``(B, K)``."""
    Cp, Cn = bk.pos(C), bk.neg(C)
    lower = bk.einsum("bkn,bn->bk", Cp, lo) + bk.einsum("bkn,bn->bk", Cn, hi)
    upper = bk.einsum("bkn,bn->bk", Cp, hi) + bk.einsum("bkn,bn->bk", Cn, lo)
    return lower, upper
