"""Batching and numpy augmentation of raw image arrays (numpy only; no torch import).

:func:`iterate_batches` (shuffling + augmentation), :func:`augment_batch` (random crop with
zero padding, random horizontal flip), :func:`default_crop_padding`. Arrays are raw pixels
``(N, C, H, W)``; normalisation comes after augmentation (:meth:`.dataset.Dataset.normalize`).
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import numpy as np

RngLike = Union[None, int, np.random.Generator]


# --------------------------------------------------------------------------------------
# Batching and augmentation
# --------------------------------------------------------------------------------------


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def default_crop_padding(height: int, width: int) -> int:
    """Zero padding of the random crop: 4 pixels, or 2 for images smaller than 16 px."""
    return 2 if min(height, width) < 16 else 4


def augment_batch(x: np.ndarray, rng: RngLike = None, padding: Optional[int] = None,
                  flip: bool = True) -> np.ndarray:
    """Random crop (zero padding ``padding`` px on each side, then an ``H x W`` window at a
    random offset per image) and, if ``flip``, a random horizontal flip per image (p = 0.5).

    ``x`` is ``(B, C, H, W)`` *raw* pixels (zero padding means black); returns a new array of
    the same shape and dtype.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W), got {x.shape}")
    rng = _as_rng(rng)
    b, c, h, w = x.shape
    pad = default_crop_padding(h, w) if padding is None else int(padding)
    out = x
    if pad > 0 and b > 0:
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant")
        oy = rng.integers(0, 2 * pad + 1, size=b)
        ox = rng.integers(0, 2 * pad + 1, size=b)
        rows = oy[:, None] + np.arange(h)[None, :]  # (B, H)
        cols = ox[:, None] + np.arange(w)[None, :]  # (B, W)
        out = padded[
            np.arange(b)[:, None, None, None],
            np.arange(c)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    else:
        out = x.copy()
    if flip and b > 0:
        mask = rng.random(b) < 0.5
        out[mask] = out[mask][..., ::-1]
    return np.ascontiguousarray(out, dtype=x.dtype)


def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool = False,
    rng: RngLike = None,
    augment: bool = False,
    drop_last: bool = False,
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_batch, y_batch)`` numpy batches.

    ``shuffle``: a fresh permutation drawn from ``rng`` (a ``np.random.Generator``, a seed or
    ``None``).  ``augment``: :func:`augment_batch` per batch (random crop with 4-pixel zero
    padding, 2 for images under 16 px, plus random horizontal flip).  ``drop_last`` skips a
    final short batch.  Batches are copies; ``x`` and ``y`` are never modified.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    x = np.asarray(x)
    y = np.asarray(y)
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} examples but y has {y.shape[0]}")
    gen = _as_rng(rng) if (shuffle or augment) else None
    order = gen.permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if drop_last and idx.shape[0] < batch_size:
            break
        xb = x[idx]
        yb = y[idx]
        if augment:
            xb = augment_batch(xb, gen)
        yield xb, yb
