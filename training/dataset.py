"""The in-memory :class:`Dataset` of certified training: raw images, normalisation and the
l_inf input box (numpy only; no torch import), and :func:`subset`.

Images are kept **raw** (``float32`` in ``data_range``, layout ``(N, C, H, W)``);
:meth:`Dataset.normalize` applies per batch *after* augmentation (:mod:`.batches`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

from .batches import RngLike, iterate_batches


# --------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A classification data set held in memory as numpy arrays.

    ``x_train``/``x_test``: ``(N, C, H, W) float32`` raw pixels in ``data_range``.
    ``y_train``/``y_test``: ``(N,) int64`` labels.
    ``mean``/``std``: ``(C,)`` normalisation constants (``0``/``1`` means no normalisation).
    ``augment``: whether training batches should be augmented (random crop + flip).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    name: str
    data_range: Tuple[float, float] = (0.0, 1.0)
    augment: bool = False

    def __post_init__(self) -> None:
        self.x_train = np.ascontiguousarray(self.x_train, dtype=np.float32)
        self.x_test = np.ascontiguousarray(self.x_test, dtype=np.float32)
        self.y_train = np.ascontiguousarray(self.y_train, dtype=np.int64).reshape(-1)
        self.y_test = np.ascontiguousarray(self.y_test, dtype=np.int64).reshape(-1)
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.ndim != 4:
                raise ValueError(f"x_{split} must have shape (N, C, H, W), got {x.shape}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"x_{split} has {x.shape[0]} examples but y_{split} has {y.shape[0]} labels"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"train and test images differ in shape: {self.x_train.shape[1:]} vs "
                f"{self.x_test.shape[1:]}"
            )
        c = self.x_train.shape[1]
        self.mean = np.broadcast_to(np.asarray(self.mean, dtype=np.float32).reshape(-1), (c,)).copy()
        self.std = np.broadcast_to(np.asarray(self.std, dtype=np.float32).reshape(-1), (c,)).copy()
        if np.any(self.std <= 0):
            raise ValueError(f"std must be positive, got {self.std}")
        lo, hi = self.data_range
        self.data_range = (float(lo), float(hi))
        if not self.data_range[0] < self.data_range[1]:
            raise ValueError(f"data_range must be (low, high) with low < high, got {self.data_range}")

    # -- shape information ------------------------------------------------------------
    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(int(s) for s in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        ys = [y for y in (self.y_train, self.y_test) if y.size]
        return int(max(int(y.max()) for y in ys)) + 1 if ys else 0

    # -- normalisation ------------------------------------------------------------------
    def _mean_c11(self) -> np.ndarray:
        return self.mean.reshape(-1, 1, 1)

    def _std_c11(self) -> np.ndarray:
        return self.std.reshape(-1, 1, 1)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` per channel; ``x`` is ``(..., C, H, W)`` raw pixels."""
        x = np.asarray(x, dtype=np.float32)
        return ((x - self._mean_c11()) / self._std_c11()).astype(np.float32, copy=False)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalize`."""
        x = np.asarray(x, dtype=np.float32)
        return (x * self._std_c11() + self._mean_c11()).astype(np.float32, copy=False)

    def eps_normalized(self, eps: float) -> np.ndarray:
        """Raw-pixel l_inf radius ``eps`` in normalised units: ``eps / std``, shape ``(C, 1, 1)``."""
        eps = float(eps)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        return (eps / self._std_c11()).astype(np.float32)

    def normalized_range(self) -> Tuple[np.ndarray, np.ndarray]:
        """``data_range`` mapped through :meth:`normalize`: ``(low, high)``, each ``(C, 1, 1)``."""
        lo, hi = self.data_range
        low = ((lo - self._mean_c11()) / self._std_c11()).astype(np.float32)
        high = ((hi - self._mean_c11()) / self._std_c11()).astype(np.float32)
        return low, high

    def input_box(self, x_normalized: np.ndarray, eps: float) -> Tuple[np.ndarray, np.ndarray]:
        """l_inf box of raw radius ``eps`` around the *normalised* input ``x_normalized``.

        Returns ``(lower, upper)`` (same shape as the input, ``float32``):
        ``x -/+ eps / std`` clamped per channel to the normalised ``data_range``.
        """
        x = np.asarray(x_normalized, dtype=np.float32)
        e = self.eps_normalized(eps)
        low, high = self.normalized_range()
        lower = np.maximum(x - e, low).astype(np.float32, copy=False)
        upper = np.minimum(x + e, high).astype(np.float32, copy=False)
        return lower, upper

    # -- iteration ------------------------------------------------------------------------
    def train_batches(
        self, batch_size: int, rng: RngLike = None, shuffle: bool = True, drop_last: bool = False
    ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Raw (un-normalised) training batches, augmented when ``self.augment``."""
        return iterate_batches(
            self.x_train, self.y_train, batch_size, shuffle=shuffle, rng=rng,
            augment=self.augment, drop_last=drop_last,
        )

    def test_batches(self, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Raw test batches in order, no augmentation."""
        return iterate_batches(self.x_test, self.y_test, batch_size, shuffle=False, rng=None)

    def __repr__(self) -> str:  # arrays would flood the terminal
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"mean={self.mean.tolist()}, std={self.std.tolist()}, data_range={self.data_range}, "
            f"augment={self.augment})"
        )


def subset(dataset: Dataset, n_train: Optional[int] = None, n_test: Optional[int] = None,
           seed: Optional[int] = None) -> Dataset:
    """A smaller copy of ``dataset`` for quick runs.

    Keeps the first ``n_train`` training and ``n_test`` test examples (``None``: all), or a
    random choice of them when ``seed`` is given.  Other fields are unchanged.
    """
    def pick(x: np.ndarray, y: np.ndarray, k: Optional[int], rng) -> Tuple[np.ndarray, np.ndarray]:
        if k is None or k >= x.shape[0]:
            return x.copy(), y.copy()
        if k < 0:
            raise ValueError(f"subset sizes must be >= 0, got {k}")
        idx = np.sort(rng.choice(x.shape[0], size=k, replace=False)) if rng is not None else np.arange(k)
        return x[idx], y[idx]

    rng = np.random.default_rng(seed) if seed is not None else None
    x_tr, y_tr = pick(dataset.x_train, dataset.y_train, n_train, rng)
    x_te, y_te = pick(dataset.x_test, dataset.y_test, n_test, rng)
    return dataclasses.replace(
        dataset, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
        mean=dataset.mean.copy(), std=dataset.std.copy(),
    )
