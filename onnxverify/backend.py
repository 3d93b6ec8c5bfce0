"""Array backends: one small interface over NumPy, CuPy and torch.

Every op rule and bound method is written once against a :class:`Backend`.
The methods below are the only array operations the engine uses; most map
one-to-one onto the array namespace, and the few the array API lacks
(convolution, its transpose, pooling) get one kernel per backend.

Shapes: images are ``(N, C, H, W)``; convolution weights ``(O, C/groups, kh, kw)``;
``pads`` are ONNX-style ``(top, left, bottom, right)``.
"""
from __future__ import annotations

import math

import numpy as np


class BackendError(RuntimeError):
    """A requested backend is not installed or has no device."""


class Backend:
    """Operations on arrays of one library. Subclasses fill in ``xp`` and kernels."""

    name = "abstract"

    # ---- creation / conversion -------------------------------------------------
    def asarray(self, a, dtype=None):
        raise NotImplementedError

    def to_numpy(self, a) -> np.ndarray:
        raise NotImplementedError

    def is_array(self, a) -> bool:
        raise NotImplementedError

    def zeros(self, shape, dtype, like=None):
        raise NotImplementedError

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

    def sigmoid(self, a):
        # numerically stable logistic, matches onnxruntime to float32 precision
        e = self.exp(-self.abs(a))
        return self.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def tanh(self, a):
        return self.xp.tanh(a)

    def sqrt(self, a):
        return self.xp.sqrt(a)

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

    def line_backward(self, A, lo_a, hi_a):
        """``pos(A) * lo_a + neg(A) * hi_a`` (A ``(B, K, ...)``, slopes ``(B, 1, ...)``)."""
        return A * lo_a + self.neg(A) * (hi_a - lo_a)

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

    def max_pool2d(self, x, kernel, stride, pads, dilation, ceil_mode):
        raise NotImplementedError

    def avg_pool2d(self, x, kernel, stride, pads, ceil_mode, count_include_pad):
        raise NotImplementedError


def pool_output_size(size: int, k: int, s: int, p0: int, p1: int, d: int, ceil_mode: bool) -> int:
    """Output length of a pooling/conv window along one axis (ONNX rules)."""
    eff = d * (k - 1) + 1
    span = size + p0 + p1 - eff
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p0:
        out -= 1  # the last window must start inside the input or left padding
    return out


def pool_geometry(hw, kernel, stride, pads, dilation, ceil_mode):
    """Output size ``(Ho, Wo)`` and the pad widths (incl. ceil-mode overhang) of a 2-D window op."""
    h, w = hw
    ho = pool_output_size(h, kernel[0], stride[0], pads[0], pads[2], dilation[0], ceil_mode)
    wo = pool_output_size(w, kernel[1], stride[1], pads[1], pads[3], dilation[1], ceil_mode)
    need_h = (ho - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    need_w = (wo - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    extra_h = max(0, need_h - (h + pads[0] + pads[2]))
    extra_w = max(0, need_w - (w + pads[1] + pads[3]))
    return (ho, wo), [(0, 0), (0, 0), (pads[0], pads[2] + extra_h), (pads[1], pads[3] + extra_w)]


def window_views(x, kernel, stride, dilation, out_hw):
    """Yield, per kernel offset (row-major), the view ``(..., Ho, Wo)`` of ``x`` (already
    padded) seen at that offset by every window. Plain slicing: works for numpy, cupy, torch."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            yield x[..., r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw]


def avg_pool_divisor(hw, kernel, stride, pads, ceil_mode, count_include_pad) -> np.ndarray:
    """Divisor of each AveragePool window, shape ``(Ho, Wo)``: cells inside the input
    (plus explicit pads when ``count_include_pad``); ceil-mode overhang never counts."""
    (ho, wo), widths = pool_geometry(hw, kernel, stride, pads, (1, 1), ceil_mode)
    h, w = hw
    hp, wp = h + widths[2][0] + widths[2][1], w + widths[3][0] + widths[3][1]
    mask = np.zeros((hp, wp))
    if count_include_pad:
        mask[: pads[0] + h + pads[2], : pads[1] + w + pads[3]] = 1.0
    else:
        mask[pads[0]:pads[0] + h, pads[1]:pads[1] + w] = 1.0
    div = np.zeros((ho, wo))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            div += mask[i:i + stride[0] * (ho - 1) + 1:stride[0], j:j + stride[1] * (wo - 1) + 1:stride[1]]
    return div


class ArrayModuleBackend(Backend):
    """NumPy-compatible namespaces (numpy, cupy): kernels by shifted strided slices."""

    def __init__(self, xp, name):
        self.xp = xp
        self.name = name

    def asarray(self, a, dtype=None):
        if dtype is None and isinstance(a, np.ndarray) and self.xp is np:
            return a
        if hasattr(a, "detach"):  # a torch tensor handed in by a user
            a = a.detach().cpu().numpy()
        return self.xp.asarray(a, dtype=dtype)

    def line_backward(self, A, lo_a, hi_a):
        out = self.xp.minimum(A, 0)
        out *= hi_a - lo_a
        out += A * lo_a
        return out

    def to_numpy(self, a):
        if self.xp is np:
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def is_array(self, a):
        return isinstance(a, self.xp.ndarray)

    def zeros(self, shape, dtype, like=None):
        return self.xp.zeros(tuple(shape), dtype=dtype)

    def conv2d(self, x, w, stride, pads, dilation, groups):
        """im2col in a channel-first layout + one BLAS product per group (or torch's
        kernel on the same memory when torch is installed: several times faster)."""
        fast = _torch_for_numpy(self)
        if fast is not None:
            return fast.to_numpy(fast.conv2d(fast.asarray(x), fast.asarray(w, dtype=x.dtype), stride, pads, dilation, groups))
        xp = self.xp
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        x = self.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
        ho = (h + pads[0] + pads[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (wd + pads[1] + pads[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        og = o // groups
        xt = x.transpose(1, 0, 2, 3)  # c n h w
        outs = []
        for g in range(groups):
            cols = xp.empty((kh * kw, cg, n, ho, wo), dtype=x.dtype)
            for k, win in enumerate(window_views(xt[g * cg:(g + 1) * cg], (kh, kw), stride, dilation, (ho, wo))):
                cols[k] = win
            wmat = w[g * og:(g + 1) * og].transpose(0, 2, 3, 1).reshape(og, kh * kw * cg).astype(x.dtype, copy=False)
            outs.append(wmat @ cols.reshape(kh * kw * cg, n * ho * wo))
        out = outs[0] if groups == 1 else xp.concatenate(outs, axis=0)
        return out.reshape(o, n, ho, wo).transpose(1, 0, 2, 3)

    def conv_transpose2d(self, y, w, stride, pads, dilation, groups, in_hw):
        """Adjoint of :meth:`conv2d`: (N, O, Ho, Wo) -> (N, C, H, W); one BLAS product per
        group, then col2im by shifted strided adds (channel-first layout)."""
        fast = _torch_for_numpy(self)
        if fast is not None:
            return fast.to_numpy(fast.conv_transpose2d(fast.asarray(y), fast.asarray(w, dtype=y.dtype), stride, pads,
                                                       dilation, groups, in_hw))
        n, o, ho, wo = y.shape
        _, cg, kh, kw = w.shape
        h, wd = in_hw
        hp, wp = h + pads[0] + pads[2], wd + pads[1] + pads[3]
        og = o // groups
        sh, sw = stride
        out = self.zeros((groups * cg, n, hp, wp), dtype=np.result_type(y.dtype, w.dtype))
        yt = y.transpose(1, 0, 2, 3)  # o n ho wo
        for g in range(groups):
            wg = w[g * og:(g + 1) * og].transpose(2, 3, 1, 0).reshape(kh * kw * cg, og).astype(y.dtype, copy=False)
            cols = (wg @ yt[g * og:(g + 1) * og].reshape(og, n * ho * wo)).reshape(kh, kw, cg, n, ho, wo)
            for i in range(kh):
                for j in range(kw):
                    r0, c0 = i * dilation[0], j * dilation[1]
                    out[g * cg:(g + 1) * cg, :, r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw] += cols[i, j]
        return out[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd].transpose(1, 0, 2, 3)

    def max_pool2d(self, x, kernel, stride, pads, dilation, ceil_mode):
        (ho, wo), widths = pool_geometry(x.shape[2:], kernel, stride, pads, dilation, ceil_mode)
        xp_ = self.pad(x, widths, value=-np.inf)
        out = None
        for win in window_views(xp_, kernel, stride, dilation, (ho, wo)):
            out = win.copy() if out is None else self.xp.maximum(out, win)
        return out

    def avg_pool2d(self, x, kernel, stride, pads, ceil_mode, count_include_pad):
        (ho, wo), widths = pool_geometry(x.shape[2:], kernel, stride, pads, (1, 1), ceil_mode)
        xp_ = self.pad(x, widths, value=0.0)
        total = None
        for win in window_views(xp_, kernel, stride, (1, 1), (ho, wo)):
            total = win.copy() if total is None else total + win
        div = avg_pool_divisor(x.shape[2:], kernel, stride, pads, ceil_mode, count_include_pad)
        return total / self.asarray(div, dtype=x.dtype)


NUMPY = ArrayModuleBackend(np, "numpy")
_TORCH_KERNELS: list = []


def _torch_for_numpy(bk):
    """torch's CPU conv kernels, zero-copy on NumPy arrays, when torch is importable and not
    disabled with ONNXVERIFY_NUMPY_KERNELS=1. None for other backends or without torch."""
    import os

    if bk.xp is not np or os.environ.get("ONNXVERIFY_NUMPY_KERNELS") == "1":
        return None
    if not _TORCH_KERNELS:
        try:
            _TORCH_KERNELS.append(get_backend("torch"))
        except BackendError:
            _TORCH_KERNELS.append(None)
    return _TORCH_KERNELS[0]


class TorchBackend(Backend):
    """torch tensors (CPU or CUDA); autograd flows through every rule."""

    name = "torch"

    def __init__(self, device=None):
        import torch
        import torch.nn.functional as F

        self.xp = torch
        self.F = F
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def _dtype(self, dtype):
        import torch

        if dtype is None or isinstance(dtype, torch.dtype):
            return dtype
        return {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64,
                np.dtype("int64"): torch.int64, np.dtype("bool"): torch.bool}[np.dtype(dtype)]

    def asarray(self, a, dtype=None):
        torch = self.xp
        if isinstance(a, torch.Tensor):
            return a.to(device=self.device, dtype=self._dtype(dtype) or a.dtype)
        return torch.as_tensor(np.require(a, requirements=("W", "C")), device=self.device, dtype=self._dtype(dtype))

    def to_numpy(self, a):
        return a.detach().cpu().numpy()

    def is_array(self, a):
        return isinstance(a, self.xp.Tensor)

    def zeros(self, shape, dtype, like=None):
        return self.xp.zeros(tuple(shape), dtype=self._dtype(dtype), device=self.device)

    def _t(self, b, like):
        return b if isinstance(b, self.xp.Tensor) else self.xp.as_tensor(b, dtype=like.dtype, device=like.device)

    def maximum(self, a, b):
        return self.xp.maximum(a, self._t(b, a))

    def minimum(self, a, b):
        return self.xp.minimum(a, self._t(b, a))

    def clip_min(self, a, lo):
        return self.xp.clamp(a, min=lo)

    def relu(self, a):
        return self.xp.relu(a)

    def neg(self, a):
        return self.xp.clamp(a, max=0)

    def where(self, cond, a, b):
        like = a if isinstance(a, self.xp.Tensor) else b
        return self.xp.where(cond, self._t(a, like), self._t(b, like))

    def sigmoid(self, a):
        return self.xp.sigmoid(a)

    def transpose(self, a, perm):
        return a.permute(*perm)

    def concat(self, arrays, axis):
        return self.xp.cat(list(arrays), dim=axis)

    def pad(self, a, widths, value=0.0):
        flat = []
        for before, after in reversed(list(widths)):
            flat += [before, after]
        return self.F.pad(a, flat, mode="constant", value=value)

    def broadcast_to(self, a, shape):
        return a.expand(*shape)

    def sum(self, a, axis=None, keepdims=False):
        if axis is None:
            return a.sum()
        return a.sum(dim=axis, keepdim=keepdims)

    def amax(self, a, axis=None, keepdims=False):
        if axis is None:
            return a.max()
        return a.amax(dim=axis, keepdim=keepdims)

    def einsum(self, expr, *ops):
        return self.xp.einsum(expr, *ops)

    def conv2d(self, x, w, stride, pads, dilation, groups):
        if pads[0] != pads[2] or pads[1] != pads[3]:
            x = self.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
            padding = (0, 0)
        else:
            padding = (pads[0], pads[1])
        return self.F.conv2d(x, w, stride=tuple(stride), padding=padding, dilation=tuple(dilation), groups=groups)

    def conv_transpose2d(self, y, w, stride, pads, dilation, groups, in_hw):
        h, wd = in_hw
        out = self.F.conv_transpose2d(y, w, stride=tuple(stride), dilation=tuple(dilation), groups=groups)
        # rows/cols of the padded input that no window touches are zero: pad only if needed
        short_h = max(0, pads[0] + h - out.shape[2])
        short_w = max(0, pads[1] + wd - out.shape[3])
        if short_h or short_w:
            out = self.F.pad(out, [0, short_w, 0, short_h])
        return out[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd]

    def max_pool2d(self, x, kernel, stride, pads, dilation, ceil_mode):
        _, widths = pool_geometry(x.shape[2:], kernel, stride, pads, dilation, ceil_mode)
        x = self.pad(x, widths, value=-float("inf"))
        return self.F.max_pool2d(x, tuple(kernel), tuple(stride), 0, tuple(dilation))

    def avg_pool2d(self, x, kernel, stride, pads, ceil_mode, count_include_pad):
        _, widths = pool_geometry(x.shape[2:], kernel, stride, pads, (1, 1), ceil_mode)
        area = float(kernel[0] * kernel[1])
        total = self.F.avg_pool2d(self.pad(x, widths), tuple(kernel), tuple(stride), 0) * area
        div = avg_pool_divisor(x.shape[2:], kernel, stride, pads, ceil_mode, count_include_pad)
        return total / self.asarray(div, dtype=x.dtype)


_BACKENDS: dict = {"numpy": NUMPY}


def get_backend(name: str | Backend | None = "numpy") -> Backend:
    """``numpy`` (default), ``torch``, ``torch:cuda``, ``cupy``, or ``auto`` (cupy if a GPU works)."""
    if isinstance(name, Backend):
        return name
    name = (name or "numpy").lower()
    if name == "auto":
        try:
            return get_backend("cupy")
        except BackendError:
            return NUMPY
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name.startswith("torch"):
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise BackendError("backend 'torch' needs torch: pip install 'onnxverify[train]'") from e
        device = name.split(":", 1)[1] if ":" in name else None
        _BACKENDS[name] = TorchBackend(device)
        return _BACKENDS[name]
    if name == "cupy":
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
            cupy.zeros(1)
        except Exception as e:  # ImportError, CUDARuntimeError, ...
            raise BackendError(f"backend 'cupy' is not available ({type(e).__name__}: {e}); "
                               "install onnxverify[gpu] on a machine with an NVIDIA GPU") from e
        _BACKENDS[name] = ArrayModuleBackend(cupy, "cupy")
        return _BACKENDS[name]
    raise BackendError(f"unknown backend {name!r}: choose numpy, torch, torch:cuda, cupy or auto")
