"""The array interface every op rule and bound engine is written against.

A :class:`Backend` wraps one array library (NumPy, CuPy, torch). Most methods map
one-to-one onto the library's namespace ``xp``; the few operations the array API lacks
(convolution, its transpose, window pooling) get one kernel per backend. Pooling kernels
take inputs that are already padded: the window geometry (pads, ceil mode, divisors) is the
op rule's business (:mod:`onnxverify.ops.pooling`).

Shapes: images are ``(N, C, H, W)``; convolution weights ``(O, C/groups, kh, kw)``;
``pads`` are ONNX-style ``(top, left, bottom, right)``.
"""
from __future__ import annotations

import weakref

import numpy as np


class Backend:
    """Operations on arrays of one library. Subclasses fill in ``xp`` and kernels."""

    name = "abstract"

    def __init__(self):
        self._consts: dict = {}

    # ---- creation / conversion -------------------------------------------------
    def asarray(self, a, dtype=None):
        raise NotImplementedError

    def to_numpy(self, a) -> np.ndarray:
        raise NotImplementedError

    def is_array(self, a) -> bool:
        raise NotImplementedError

    def zeros(self, shape, dtype, like=None):
        raise NotImplementedError

    def const(self, value, dtype, absolute: bool = False):
        """A constant parameter (a NumPy array of the IR) as an array of this backend in
        ``dtype`` (its absolute value with ``absolute``: interval rules' ``|W|``), converted
        once and cached while ``value`` lives. Non-NumPy values (a torch Parameter tied in
        during training) are converted on every call, keeping autograd."""
        if not isinstance(value, np.ndarray):
            out = self.asarray(value, dtype=dtype)
            return self.abs(out) if absolute else out
        key = (id(value), dtype, absolute)
        hit = self._consts.get(key)
        if hit is not None and hit[0]() is value:
            return hit[1]
        out = self.asarray(np.abs(value) if absolute else value, dtype=dtype)
        ref = weakref.ref(value, lambda _r, k=key, c=self._consts: c.pop(k, None))
        self._consts[key] = (ref, out)
        return out

    # ---- elementwise ------------------------------------------------------------
    def maximum(self, a, b):
        return self.xp.maximum(a, b)

    def minimum(self, a, b):
        return self.xp.minimum(a, b)

    def clip_min(self, a, lo: float):
        return self.xp.maximum(a, self.asarray(lo, dtype=a.dtype))

    def relu(self, a):
        return self.xp.maximum(a, 0)

    def pos(self, a):
        """max(a, 0)."""
        return self.relu(a)

    def neg(self, a):
        """min(a, 0)."""
        return self.xp.minimum(a, 0)

    def abs(self, a):
        return self.xp.abs(a)

    def where(self, cond, a, b):
        return self.xp.where(cond, a, b)

    def exp(self, a):
        return self.xp.exp(a)

    def log(self, a):
        return self.xp.log(a)

    def sigmoid(self, a):
        # numerically stable logistic, matches onnxruntime to float32 precision
        e = self.exp(-self.abs(a))
        return self.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def tanh(self, a):
        return self.xp.tanh(a)

    def sqrt(self, a):
        return self.xp.sqrt(a)

    # ---- elementwise math (nonlinear ops) ------------------------------------------
    def sin(self, a):
        return self.xp.sin(a)

    def cos(self, a):
        return self.xp.cos(a)

    def arccos(self, a):
        return self.xp.arccos(a)

    def floor(self, a):
        return self.xp.floor(a)

    def ceil(self, a):
        return self.xp.ceil(a)

    def round(self, a):
        """Round half to even (ONNX ``Round``)."""
        return self.xp.round(a)

    def sign(self, a):
        return self.xp.sign(a)

    def isfinite(self, a):
        return self.xp.isfinite(a)

    def power(self, a, p: float):
        """``a ** p`` for a constant exponent."""
        return a ** p

    def erf(self, a):
        """The error function from array operations only (NumPy and CuPy): ``1 - erfc`` with
        the Chebyshev-fitted ``erfc`` of Numerical Recipes (``erfcc``, fractional error below
        1.2e-7; measured absolute error of erf below 8.4e-8 on [-8, 8], tests/test_ops_nonlinear.py).
        Rules that use it widen their lines by that error (``value_abs_error``)."""
        z = self.abs(a)
        t = 1.0 / (1.0 + 0.5 * z)
        poly = 0.17087277
        for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196, 1.00002368,
                  -1.26551223):
            poly = c + t * poly
        erfc = t * self.exp(-z * z + poly)
        return self.where(a < 0, erfc - 1.0, 1.0 - erfc)

    # ---- shape ------------------------------------------------------------------
    def reshape(self, a, shape):
        return a.reshape(tuple(shape))

    def transpose(self, a, perm):
        return a.transpose(tuple(perm))

    def concat(self, arrays, axis):
        return self.xp.concatenate(list(arrays), axis=axis)

    def pad(self, a, widths, value=0.0):
        """Constant padding; ``widths`` is a list of (before, after) per axis."""
        return self.xp.pad(a, widths, mode="constant", constant_values=value)

    def broadcast_to(self, a, shape):
        return self.xp.broadcast_to(a, tuple(shape))

    def split_dot(self, A, p, n):
        """``sum_x max(A, 0) p + min(A, 0) n`` per row: ``A (B, K, X)``, ``p, n (B, X)`` ->
        ``(B, K)`` (Hölder's bound of a box: ``p``, ``n`` its far and near corners)."""
        return self.einsum("bkn,bn->bk", self.pos(A), p) + self.einsum("bkn,bn->bk", self.neg(A), n)

    def fused(self, fn, arrays, n_out: int = 1) -> tuple:
        """``fn(*arrays)``: a chain of elementwise operations (written with arithmetic
        operators and this backend's elementwise methods) returning ``n_out`` arrays of the
        broadcast shape, as a tuple. NumPy runs it in cache-sized blocks over the first two
        axes on the thread policy's threads (:mod:`.blocked`); other backends in one go."""
        out = fn(*arrays)
        return tuple(out) if n_out > 1 else (out,)

    def scaled_owned(self, a, m):
        """``a * m`` (``m`` broadcast to ``a``'s shape), where the caller owns ``a`` and no
        longer needs it: a backend may write the result into ``a``'s memory."""
        return a * m

    def through_lines(self, A, a, da, b, db):
        """One backward step through bounding lines: coefficients ``A (N, G, X)`` (``N``
        groups of ``G`` rows; a line array is shared by a group's rows when its axis 1 is 1)
        meet lines ``a, da, b, db`` ``(N, 1 or G, X)`` (``b``/``db`` None: zero). Returns

        * ``A a + min(A, 0) da``, ``(N, G, X)``,
        * ``sum_x A b + min(A, 0) db``, ``(N, G)``.

        A lower bound passes the lower line as ``(a, b)`` and ``da, db`` = upper minus lower
        (``pos(A)`` meets the lower line, ``neg(A)`` the upper one); an upper bound the
        mirror."""
        n = self.neg(A)
        new = A * a + n * da
        bias = None
        for c, v in ((A, b), (n, db)):
            if v is not None:
                t = self.einsum("ngx,nx->ng", c, v[:, 0]) if v.shape[1] == 1 else self.sum(c * v, axis=2)
                bias = t if bias is None else bias + t
        return new, (self.zeros(A.shape[:2], dtype=new.dtype) if bias is None else bias)

    # ---- reductions / products ----------------------------------------------------
    def sum(self, a, axis=None, keepdims=False):
        return a.sum(axis=axis, keepdims=keepdims)

    def amax(self, a, axis=None, keepdims=False):
        return a.max(axis=axis, keepdims=keepdims)

    def matmul(self, a, b):
        return a @ b

    def einsum(self, expr, *ops):
        return self.xp.einsum(expr, *ops)

    # ---- kernels --------------------------------------------------------------------
    def conv2d(self, x, w, stride, pads, dilation, groups):
        raise NotImplementedError

    def conv_transpose2d(self, y, w, stride, pads, dilation, groups, in_hw):
        raise NotImplementedError

    def max_pool2d(self, x, kernel, stride, dilation):
        """Window maxima of an already padded ``x (N, C, H, W)``."""
        out = None
        for win in window_views(x, kernel, stride, dilation, window_count(x.shape[2:], kernel, stride, dilation)):
            out = win + 0 if out is None else self.maximum(out, win)
        return out

    # ---- patches (per-row windows of backward coefficients, onnxverify.ops.patches) -------
    def index(self, a):
        """A NumPy int array as an index array of this library."""
        return a if self.xp is np else self.xp.asarray(a)

    def take(self, a, idx, axis: int):
        """The entries ``idx`` (a NumPy int array) of ``a`` along ``axis`` (a gather, several
        times faster than fancy indexing on a last axis)."""
        return self.xp.take(a, self.index(idx), axis=axis)

    def take_windows(self, x, batch, top, left, size):
        """Row ``(b, k)``'s window ``x[batch[b, k], (k,) :, top:top + ph, left:left + pw]``:
        ``x`` ``(N, C, H, W)`` or ``(B, K, C, H, W)``, ``batch`` (None: ``b``), ``top``,
        ``left`` NumPy ints ``(B, K)`` with every window inside ``x`` -> a new
        ``(B, K, C, ph, pw)`` array."""
        xp = self.xp
        swv = np.lib.stride_tricks.sliding_window_view if xp is np else xp.lib.stride_tricks.sliding_window_view
        view = swv(x, tuple(size), axis=(x.ndim - 2, x.ndim - 1))
        b = self.index(np.arange(top.shape[0])[:, None] if batch is None else batch)
        t, l_ = self.index(top), self.index(left)
        if x.ndim == 5:
            return view[b, self.index(np.arange(top.shape[1])[None, :]), :, t, l_]
        return view[b, :, t, l_]

    def put_windows(self, data, top, left, hw):
        """Adjoint of :meth:`take_windows`: ``data (B, K, C, ph, pw)`` placed at each row's
        window of a zero ``(B, K, C, *hw)`` array (every window inside it)."""
        B, K, C, ph, pw = data.shape
        xp = self.xp
        out = self.zeros((B, K, C) + tuple(hw), dtype=data.dtype)
        swv = np.lib.stride_tricks.sliding_window_view if xp is np else xp.lib.stride_tricks.sliding_window_view
        view = swv(out, (ph, pw), axis=(3, 4), writeable=True) if xp is np else swv(out, (ph, pw), axis=(3, 4))
        view[self.index(np.arange(B)[:, None]), self.index(np.arange(K)[None, :]), :,
             self.index(top), self.index(left)] = data
        return out

    def put_rows(self, base, bi, pos, values):
        """A copy of ``base (B, N)`` with ``base[bi[j], pos[j]] = values[j]`` (NumPy int
        indices ``(J,)``, no repeated pair)."""
        out = base.copy()
        out[self.index(bi), self.index(pos)] = values
        return out

    def sum_pool2d(self, x, kernel, stride):
        """Window sums of an already padded ``x (N, C, H, W)`` (no dilation)."""
        out = None
        for win in window_views(x, kernel, stride, (1, 1), window_count(x.shape[2:], kernel, stride, (1, 1))):
            out = win + 0 if out is None else out + win
        return out


def window_count(hw, kernel, stride, dilation):
    """Number of whole windows ``(Ho, Wo)`` along each axis of an (already padded) input."""
    return tuple((size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip(hw, kernel, stride, dilation))


def window_views(x, kernel, stride, dilation, out_hw):
    """Yield, per kernel offset (row-major), the view ``(..., Ho, Wo)`` of ``x`` (already
    padded) seen at that offset by every window. Plain slicing: works for numpy, cupy, torch."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            yield x[..., r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw]

