"""Input sets: where the network input may lie.

All sets carry a leading batch axis: ``x0``/``lower``/``upper`` have shape
``(batch, *input_shape)``; an unbatched array gets a batch axis of 1 in :meth:`batched`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


def _finite(name, a):
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains {int((~np.isfinite(a)).sum())} NaN/Inf value(s)")
    return a


class InputSet:
    """Base class. ``p`` is the norm of the set (``inf`` for boxes)."""

    p = np.inf

    def box(self) -> tuple:
        """An axis-aligned box ``(lower, upper)`` containing the set."""
        raise NotImplementedError

    def batched(self, input_shape: tuple) -> "InputSet":
        """The same set with arrays of shape ``(batch, *input_shape)``; raises on mismatch."""
        raise NotImplementedError


def _batch(name, a, input_shape):
    a = np.asarray(a, dtype=np.float64)
    shape = tuple(input_shape)
    if a.shape == shape:
        return a[None]
    if a.shape[1:] == shape:
        return a
    if a.size == int(np.prod(shape, dtype=np.int64)):  # e.g. a flat vector from a VNN-LIB file
        return a.reshape((1,) + shape)
    raise InputError(f"{name} has shape {a.shape}, but the model input is {shape} (plus a batch axis)")


@dataclass
class Box(InputSet):
    """``lower <= x <= upper`` elementwise."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self):
        self.lower = _finite("lower bound", self.lower)
        self.upper = _finite("upper bound", self.upper)
        if self.lower.shape != self.upper.shape:
            raise InputError(f"lower {self.lower.shape} and upper {self.upper.shape} shapes differ")
        if (self.lower > self.upper).any():
            raise InputError(f"lower > upper at {int((self.lower > self.upper).sum())} position(s)")

    def box(self):
        return self.lower, self.upper

    def batched(self, input_shape):
        return Box(_batch("lower bound", self.lower, input_shape), _batch("upper bound", self.upper, input_shape))

    @property
    def center(self):
        return (self.lower + self.upper) / 2


@dataclass
class LinfBall(Box):
    """``||x - x0||_inf <= eps``, intersected with ``clip = (lo, hi)`` (the data range) if given."""

    def __init__(self, x0, eps, clip=None):
        x0 = _finite("input", x0)
        eps = _check_eps(eps)
        self.x0, self.eps, self.clip = x0, eps, clip
        lo, hi = x0 - eps, x0 + eps
        if clip is not None:
            lo, hi = np.clip(lo, clip[0], clip[1]), np.clip(hi, clip[0], clip[1])
            hi = np.maximum(hi, lo)
        super().__init__(lo, hi)

    def batched(self, input_shape):
        eps = self.eps
        if np.ndim(eps) > 0:  # per-element eps: batch it like x0
            eps = np.broadcast_to(eps, self.x0.shape)
            eps = _batch("eps", eps, input_shape)
        return LinfBall(_batch("input", self.x0, input_shape), eps, self.clip)


@dataclass
class LpBall(InputSet):
    """``||x - x0||_p <= eps`` for ``p`` in {1, 2} (``inf`` gives a :class:`LinfBall`)."""

    x0: np.ndarray
    eps: float
    p: float = 2

    def __post_init__(self):
        self.x0 = _finite("input", self.x0)
        self.eps = float(_check_eps(self.eps))
        if self.p in ("inf", np.inf, float("inf")):
            raise InputError("use LinfBall for p = inf")
        self.p = float(self.p)
        if self.p not in (1.0, 2.0):
            raise InputError(f"p = {self.p} is not supported (choose 1, 2 or inf)")

    @property
    def q(self) -> float:
        """Dual norm exponent: 1/p + 1/q = 1."""
        return np.inf if self.p == 1 else 2.0

    def box(self):
        return self.x0 - self.eps, self.x0 + self.eps

    def batched(self, input_shape):
        return LpBall(_batch("input", self.x0, input_shape), self.eps, self.p)


def _check_eps(eps):
    e = np.asarray(eps, dtype=np.float64)
    if not np.isfinite(e).all():
        raise InputError(f"eps must be finite, got {eps}")
    if (e < 0).any():
        raise InputError(f"eps must be >= 0, got {float(e.min()) if e.ndim else float(e)}")
    return float(e) if e.ndim == 0 else e


def make_input_set(x0, eps, norm="inf", clip=None) -> InputSet:
    """CLI helper: an l_inf, l_1 or l_2 ball around ``x0``."""
    norm = str(norm).lower()
    if norm in ("inf", "linf", "infinity"):
        return LinfBall(x0, eps, clip)
    if norm in ("1", "2", "l1", "l2"):
        return LpBall(x0, eps, int(norm[-1]))
    raise InputError(f"unknown norm {norm!r}: choose inf, 1 or 2")
