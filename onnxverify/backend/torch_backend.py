"""torch tensors (CPU or CUDA) as a :class:`~.base.Backend`: autograd flows through every rule,
which is how training differentiates the verifier's bounds."""
from __future__ import annotations

import numpy as np

from .base import Backend


class TorchBackend(Backend):
    """torch tensors (CPU or CUDA); autograd flows through every rule."""

    name = "torch"

    def __init__(self, device=None):
        import torch
        import torch.nn.functional as F

        from . import threads

        super().__init__()
        threads.use_torch()  # one pool does the parallel work: torch's from now on
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

    # ---- elementwise math (nonlinear ops) ------------------------------------------
    def erf(self, a):
        return self.xp.erf(a)

    def power(self, a, p):
        return self.xp.pow(a, p)

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
        out = self.conv_transpose2d_full(y, w, stride, dilation, groups)
        # rows/cols of the padded input that no window touches are zero: pad only if needed
        short_h = max(0, pads[0] + h - out.shape[2])
        short_w = max(0, pads[1] + wd - out.shape[3])
        if short_h or short_w:
            out = self.F.pad(out, [0, short_w, 0, short_h])
        return out[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd]

    def conv_transpose2d_full(self, y, w, stride, dilation, groups, form=None):
        """The transposed convolution without padding, ``(N, C, (Ho - 1) * sh + dh * (kh - 1)
        + 1, ...)``, in the form :func:`conv_transpose_form` picks (or ``form``)."""
        form = form or conv_transpose_form(y, w, stride, dilation, groups)
        return _CT_FORMS[form](self, y, w, tuple(stride), tuple(dilation), groups)

    def index(self, a):
        return self.xp.as_tensor(a, device=self.device)

    def take(self, a, idx, axis: int):
        return a.index_select(axis % a.dim(), self.index(idx))

    def take_windows(self, x, batch, top, left, size):
        ph, pw = size
        view = x.unfold(x.dim() - 2, ph, 1).unfold(x.dim() - 1, pw, 1)  # (..., C, H', W', ph, pw)
        b = self.index(np.arange(top.shape[0])[:, None] if batch is None else batch)
        t, l_ = self.index(top), self.index(left)
        if x.dim() == 5:
            return view[b, self.index(np.arange(top.shape[1])[None, :]), :, t, l_]
        return view[b, :, t, l_]

    def put_windows(self, data, top, left, hw):
        """One scatter on flat indices (autograd flows through ``data``)."""
        torch = self.xp
        B, K, C, ph, pw = data.shape
        H, W = hw
        base = torch.as_tensor((top * W + left).reshape(B * K, 1), device=data.device)
        grid = (torch.arange(C, device=data.device)[:, None, None] * (H * W)
                + torch.arange(ph, device=data.device)[None, :, None] * W
                + torch.arange(pw, device=data.device)[None, None, :]).reshape(1, -1)
        out = torch.zeros((B * K, C * H * W), dtype=data.dtype, device=data.device)
        out = out.scatter(1, base + grid, data.reshape(B * K, -1))
        return out.reshape(B, K, C, H, W)

    def put_rows(self, base, bi, pos, values):
        return base.index_put((self.index(bi), self.index(pos)), values)

    def max_pool2d(self, x, kernel, stride, dilation):
        return self.F.max_pool2d(x, tuple(kernel), tuple(stride), 0, tuple(dilation))

    def sum_pool2d(self, x, kernel, stride):
        return self.F.avg_pool2d(x, tuple(kernel), tuple(stride), 0) * float(kernel[0] * kernel[1])


# ---- transposed convolution: three forms on the CPU ------------------------------------------------
#: output channels below which the CPU transposed convolution is a product and a fold
FOLD_CHANNELS = 8


def conv_transpose_form(y, w, stride, dilation, groups) -> str:
    """Which form :meth:`TorchBackend.conv_transpose2d_full` uses for ``y (N, O, Ho, Wo)``
    and ``w (O, C/groups, kh, kw)``. On the CPU (measured with one thread on the backward
    passes of conv nets, e.g. ``(5776, 32, 3, 3)`` rows through a ``32 -> 32`` 4x4 stride-2
    kernel): a window of one output position is a plain matrix product (``"matmul"``: 6x
    faster than torch's kernel), fewer than :data:`FOLD_CHANNELS` output channels a product
    and :func:`torch.nn.functional.fold` (``"fold"``: 1.2x), a strided one torch's kernel in
    channels-last memory format with a contiguous result (``"channels_last"``: 1.2-1.4x;
    without the copy back the later NumPy steps on the strided result lose more than the
    kernel gains, and at stride 1 the copy eats the gain); anything else, and every other
    device, torch's kernel as it is (``"plain"``). Grouped convolutions use the kernel."""
    if y.device.type != "cpu":
        return "plain"
    if groups == 1 and y.shape[2] == 1 and y.shape[3] == 1 and tuple(dilation) == (1, 1):
        return "matmul"
    if groups == 1 and w.shape[1] < FOLD_CHANNELS:
        return "fold"
    if tuple(stride) != (1, 1):
        return "channels_last"
    return "plain"


def _ct_plain(bk, y, w, stride, dilation, groups):
    return bk.F.conv_transpose2d(y, w, stride=stride, dilation=dilation, groups=groups)


def _ct_matmul(bk, y, w, stride, dilation, groups):
    """One output position (``Ho = Wo = 1``, no dilation): ``y (N, O) @ w (O, C kh kw)``."""
    N, O = y.shape[:2]
    return bk.xp.matmul(y.reshape(N, O), w.reshape(O, -1)).reshape((N,) + tuple(w.shape[1:]))


def _ct_fold(bk, y, w, stride, dilation, groups):
    """Few output channels: the columns ``w^T y (N, C kh kw, Ho Wo)``, summed into place by fold."""
    N, O, Ho, Wo = y.shape
    _, C, kh, kw = w.shape
    size = ((Ho - 1) * stride[0] + dilation[0] * (kh - 1) + 1, (Wo - 1) * stride[1] + dilation[1] * (kw - 1) + 1)
    cols = bk.xp.matmul(w.reshape(O, C * kh * kw).t(), y.reshape(N, O, Ho * Wo))
    return bk.F.fold(cols, size, (kh, kw), dilation=dilation, stride=stride)


def _ct_channels_last(bk, y, w, stride, dilation, groups):
    cl = bk.xp.channels_last
    out = bk.F.conv_transpose2d(y.contiguous(memory_format=cl), w.contiguous(memory_format=cl), stride=stride,
                                dilation=dilation, groups=groups)
    return out.contiguous()


_CT_FORMS = {"plain": _ct_plain, "matmul": _ct_matmul, "fold": _ct_fold, "channels_last": _ct_channels_last}
