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
    """Base class. ``p`` is the norm of the set (``inf`` for boxes); ``q`` the dual norm's
    exponent for l_p balls whose affine prefix is mapped exactly (None for boxes)."""

    p = np.inf
    q = None

    def box(self) -> tuple:
        """An axis-aligned box ``(lower, upper)`` containing the set."""
        raise NotImplementedError

    def batched(self, input_shape: tuple) -> "InputSet":
        """The same set with arrays of shape ``(batch, *input_shape)``; raises on mismatch."""
        raise NotImplementedError

    def concretize(self, bk, A, c, upper: bool):
        """The bound of ``A x + c`` over the set: ``A (B, K, n0)`` (coefficients of the flattened
        input), ``c (B, K)`` -> ``(B, K)``, the maximum (``upper``) or the minimum."""
        raise NotImplementedError

    def concretize_patches(self, bk, P, c, upper: bool):
        """:meth:`concretize` for coefficients held as :class:`~onnxverify.ops.patches.Patches`
        on the input (one window per row, zero outside it): ``c (B, K)`` -> ``(B, K)``.
        Default: the dense rows through :meth:`concretize` (a set without a window form, or
        a subclass that overrides :meth:`concretize`, e.g. to record the coefficients)."""
        A = P.dense(bk)
        return self.concretize(bk, bk.reshape(A, tuple(A.shape[:2]) + (-1,)), c, upper)

    def _own_concretize(self, cls) -> bool:
        """Whether :meth:`concretize` is ``cls``'s (not overridden): only then does
        ``cls.concretize_patches`` compute the same bound."""
        return type(self).concretize is cls.concretize

    def _image(self, bk, name: str, make, dtype):
        """``make()`` (a ``(B, *input_shape)`` array) as a backend array in ``dtype``, cached
        per backend like :meth:`_flat`."""
        cache = self.__dict__.setdefault("_device", {})
        key = (bk.name, "image", name, str(dtype))
        if key not in cache:
            cache[key] = bk.asarray(make(), dtype=dtype)
        return cache[key]

    def _flat(self, bk, name: str, a, dtype):
        """``a`` as a backend array ``(B, n0)`` in ``dtype``, converted once per backend."""
        cache = self.__dict__.setdefault("_device", {})
        key = (bk.name, name, str(dtype))
        if key not in cache:
            batch = a.shape[0]
            cache[key] = bk.reshape(bk.asarray(a, dtype=dtype), (batch, -1))
        return cache[key]


def _batch(name, a, input_shape):
    """``a`` as ``(batch, *input_shape)`` float64; raises :class:`InputError` otherwise.

    Accepted, and nothing else (so a wrong layout is never reshaped in silence):

    * one sample of exactly ``input_shape`` (gets a batch axis of 1);
    * a batch ``(B, *input_shape)``;
    * a flat vector ``(n,)`` or a batch of them ``(B, n)`` with ``n = prod(input_shape)``, read
      in C order: VNN-LIB's ``X_0 .. X_{n-1}`` numbering, counterexample files and other flat
      sources. A flat vector has no layout of its own, so nothing is guessed.

    Any other shape of the right size (e.g. a ``(3, 32, 32)`` CHW image for a ``(32, 32, 3)``
    HWC model, or ``(28, 28)`` for ``(1, 28, 28)``) is refused with both shapes and a fix.
    """
    a = np.asarray(a, dtype=np.float64)
    shape = tuple(int(d) for d in input_shape)
    n = int(np.prod(shape, dtype=np.int64))
    if a.shape == shape:
        out = a[None]
    elif a.ndim == len(shape) + 1 and a.shape[1:] == shape:
        out = a
    elif len(shape) > 1 and a.ndim == 1 and a.size == n:
        out = a.reshape((1,) + shape)
    elif len(shape) > 1 and a.ndim == 2 and a.shape[1] == n:
        out = a.reshape((a.shape[0],) + shape)
    else:
        raise InputError(_shape_message(name, a.shape, shape))
    if out.shape[0] == 0:
        raise InputError(f"{name} has shape {a.shape}: an empty batch (no samples)")
    return out


def _shape_message(name, got, shape):
    """One line: what was given, what the model takes, and how to fix it."""
    n = int(np.prod(shape, dtype=np.int64))
    head = f"{name} has shape {tuple(got)}, but the model takes {shape} per sample"
    batch = f"(N, {', '.join(map(str, shape))})"
    accepted = f"give {shape}, {batch} or a flat ({n},) vector in C order" if len(shape) > 1 else \
        f"give {shape} or {batch}"
    lead = len(got) - len(shape)
    tail = tuple(got[lead:]) if lead >= 0 else ()
    if lead in (0, 1) and tail != shape and sorted(tail) == sorted(shape):  # another layout of the same axes
        axes = tuple(range(lead)) + tuple(lead + p for p in _permutation(tail, shape))
        return (f"{head}: the same axes in another order (channels first vs last?) are not reshaped; "
                f"transpose it, e.g. np.transpose(x, {axes}), or {accepted}")
    size = int(np.prod(got, dtype=np.int64))
    if size == n and [d for d in got if d != 1] == [d for d in shape if d != 1]:
        return f"{head}: only size-1 axes differ; add or drop them, e.g. x.reshape({shape}), or {accepted}"
    if size == n or (lead >= 0 and len(got) and size == got[0] * n):
        return f"{head}: the number of values fits but the shape does not, and it is not guessed; {accepted}"
    return f"{head}; {accepted}"


def _permutation(got, want):
    """Axes ``p`` with ``tuple(got[i] for i in p) == want`` (repeated sizes matched in order)."""
    used, perm = set(), []
    for w in want:
        i = next(i for i, g in enumerate(got) if g == w and i not in used)
        used.add(i)
        perm.append(i)
    return tuple(perm)


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

    def concretize(self, bk, A, c, upper: bool):
        """Hölder for boxes: ``pos(A) x_hi + neg(A) x_lo + c`` for the maximum (mirrored for the
        minimum)."""
        lo = self._flat(bk, "lower", self.lower, A.dtype)
        hi = self._flat(bk, "upper", self.upper, A.dtype)
        near, far = (hi, lo) if upper else (lo, hi)
        return bk.split_dot(A, near, far) + c

    def concretize_patches(self, bk, P, c, upper: bool):
        """Hölder per row on its window, without the dense rows: ``<A, mid> +- <|A|, rad>``
        with the box's centre and radius read at each group's window (zero outside the
        input, where the patch is zero too). Each row of ``P`` is one window of coefficients,
        so this is the dense bound exactly (up to rounding). The radius is rounded up so that
        ``[mid - rad, mid + rad]`` holds the box in ``P``'s dtype."""
        if not self._own_concretize(Box):
            return super().concretize_patches(bk, P, c, upper)
        from ..ops.patches import inner, take

        dtype = P.data.dtype
        both = []  # centre and radius, computed once for the two cached images

        def part(i):
            if not both:
                both.extend(_centre_radius(self.lower, self.upper, dtype))
            return both[i]

        mid = self._image(bk, "mid", lambda: part(0), dtype)
        rad = self._image(bk, "rad", lambda: part(1), dtype)
        A = P.grouped(bk)
        centre = inner(bk, P, A, take(bk, mid, P))
        radius = inner(bk, P, bk.abs(A), take(bk, rad, P))
        return centre + radius + c if upper else centre - radius + c

    @property
    def center(self):
        return (self.lower + self.upper) / 2


@dataclass
class LinfBall(Box):
    """``||x - x0||_inf <= eps``, intersected with ``clip = (lo, hi)`` (the data range) if given."""

    def __init__(self, x0, eps, clip=None):
        x0 = _finite("input", x0)
        eps = _check_eps(eps)
        clip = _check_clip(clip, x0)
        self.x0, self.eps, self.clip = x0, eps, clip
        lo, hi = x0 - eps, x0 + eps
        if clip is not None:  # x0 lies in the clip range, so the box stays non-empty and holds x0
            lo, hi = np.clip(lo, clip[0], clip[1]), np.clip(hi, clip[0], clip[1])
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

    def concretize(self, bk, A, c, upper: bool):
        """``A x0 + c +- eps ||A_row||_q`` (Hölder)."""
        x0 = self._flat(bk, "x0", self.x0, A.dtype)
        centre = bk.einsum("bkn,bn->bk", A, x0) + c
        aa = bk.abs(A)
        norm = bk.amax(aa, axis=2) if self.q == np.inf else bk.sqrt(bk.sum(aa * aa, axis=2))
        return centre + norm * self.eps if upper else centre - norm * self.eps

    def concretize_patches(self, bk, P, c, upper: bool):
        """``<A, x0> + c +- eps ||A_row||_q`` on each row's window: a row of ``P`` is one
        window of coefficients and zero elsewhere (positions outside the input are zeroed
        first), so its dual norm over the whole input is the norm of its window -- the dense
        bound exactly (up to rounding)."""
        if not self._own_concretize(LpBall):
            return super().concretize_patches(bk, P, c, upper)
        from ..ops.patches import inner, take

        P = P.cleaned(bk)
        x0 = self._image(bk, "x0", lambda: self.x0, P.data.dtype)
        centre = inner(bk, P, P.grouped(bk), take(bk, x0, P)) + c
        aa = bk.abs(bk.reshape(P.data, tuple(P.data.shape[:2]) + (-1,)))
        norm = bk.amax(aa, axis=2) if self.q == np.inf else bk.sqrt(bk.sum(aa * aa, axis=2))
        return centre + norm * self.eps if upper else centre - norm * self.eps

    def batched(self, input_shape):
        return LpBall(_batch("input", self.x0, input_shape), self.eps, self.p)


def _centre_radius(lower, upper, dtype):
    """Centre and radius of a box for :meth:`Box.concretize_patches`: the centre rounded to
    ``dtype``, the radius the largest distance from it to either bound, rounded up in
    ``dtype`` (NumPy bounds: ``[mid - rad, mid + rad]`` then holds ``[lower, upper]``);
    other arrays (torch, training) by plain arithmetic."""
    if not isinstance(lower, np.ndarray):
        return lower / 2 + upper / 2, upper / 2 - lower / 2
    npd = np.dtype(str(dtype).replace("torch.", "")) if str(dtype).startswith("torch.") else np.dtype(dtype)
    mid = (lower / 2 + upper / 2).astype(npd)
    m64 = mid.astype(np.float64)
    need = np.maximum(upper - m64, m64 - lower)
    rad = need.astype(npd)
    rad = np.where(rad.astype(np.float64) < need, np.nextafter(rad, npd.type(np.inf)), rad)
    return mid, rad


#: How far (relative to the clip bound's size, at least absolute 1e-6) a sample may lie outside
#: its clip range and still count as inside (float rounding of data scaled to [0, 1]).
CLIP_SLACK = 1e-6


def _check_clip(clip, x0):
    """``clip = (lo, hi)`` (scalars or arrays broadcastable to ``x0``) checked, or None.

    Refuses ``lo > hi`` and NaN, and a sample outside ``[lo, hi]``: the clipped ball would
    not contain it (it could even be empty), so any verdict about it would be meaningless.
    """
    if clip is None:
        return None
    try:
        lo, hi = clip
    except (TypeError, ValueError):
        raise InputError(f"clip must be a pair (LO, HI), got {clip!r}") from None
    lo_a, hi_a = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if np.isnan(lo_a).any() or np.isnan(hi_a).any():
        raise InputError(f"clip range contains NaN: ({lo}, {hi})")
    if (lo_a > hi_a).any():
        raise InputError(f"clip range LO {_fmt(lo_a)} is above HI {_fmt(hi_a)}: give --clip LO HI with LO <= HI")
    try:
        below = x0 < lo_a - CLIP_SLACK * np.maximum(1.0, np.abs(lo_a))
        above = x0 > hi_a + CLIP_SLACK * np.maximum(1.0, np.abs(hi_a))
    except ValueError:
        raise InputError(f"clip bounds of shape {lo_a.shape} / {hi_a.shape} do not broadcast to the input "
                         f"{x0.shape}") from None
    bad = int((below | above).sum())
    if bad:
        raise InputError(f"{bad} of {x0.size} input value(s) lie outside the clip range [{_fmt(lo_a)}, {_fmt(hi_a)}] "
                         f"(the input spans [{x0.min():.6g}, {x0.max():.6g}]): the clipped ball would not contain "
                         "the sample; give the data range the input is scaled to (e.g. --clip 0 1), or no --clip")
    return lo, hi


def _fmt(a):
    return f"{float(a):g}" if np.ndim(a) == 0 else f"array{np.shape(a)}"


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
        if clip is not None:
            raise InputError(f"a clip range applies to l_inf balls only; drop --clip for the l_{norm[-1]} ball")
        return LpBall(x0, eps, int(norm[-1]))
    raise InputError(f"unknown norm {norm!r}: choose inf, 1 or 2")
