"""NumPy-compatible array namespaces (numpy, cupy) as a :class:`~.base.Backend`.

Convolutions are im2col in a channel-first layout plus one BLAS product per group; on NumPy
they borrow torch's CPU kernels zero-copy when torch is importable (several times faster;
``ONNXVERIFY_NUMPY_KERNELS=1`` forces the pure-NumPy path). While torch's kernels serve
NumPy, large matrix products go through torch too, so that one thread pool does the parallel
work (:mod:`.threads`).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import BackendError
from . import blocked as _blocked
from . import threads as _threads
from .base import Backend, window_views


class ArrayModuleBackend(Backend):
    """NumPy-compatible namespaces (numpy, cupy): kernels by shifted strided slices."""

    def __init__(self, xp, name):
        super().__init__()
        self.xp = xp
        self.name = name

    def asarray(self, a, dtype=None):
        if dtype is None and isinstance(a, np.ndarray) and self.xp is np:
            return a
        if hasattr(a, "detach"):  # a torch tensor handed in by a user
            a = a.detach().cpu().numpy()
        return self.xp.asarray(a, dtype=dtype)

    def split_dot(self, A, p, n):
        if self.xp is np and A.ndim == 3 and p.ndim == n.ndim == 2:
            return _blocked.split_dot(A, p, n)
        return super().split_dot(A, p, n)

    def fused(self, fn, arrays, n_out: int = 1) -> tuple:
        if self.xp is np:
            return _blocked.fused(fn, list(arrays), n_out)
        return super().fused(fn, arrays, n_out)

    def scaled_owned(self, a, m):
        if a.flags.writeable and np.broadcast_shapes(a.shape, m.shape) == a.shape and np.can_cast(m.dtype, a.dtype, "same_kind"):
            a *= m
            return a
        return a * m

    def through_lines(self, A, a, da, b, db):
        if self.xp is np:  # cache-sized blocks over the policy's threads
            return _blocked.through_lines(A, a, da, b, db)
        return super().through_lines(A, a, da, b, db)

    def to_numpy(self, a):
        if self.xp is np:
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def is_array(self, a):
        return isinstance(a, self.xp.ndarray)

    def zeros(self, shape, dtype, like=None):
        return self.xp.zeros(tuple(shape), dtype=dtype)

    def matmul(self, a, b):
        # through torch only once it is in use (a conv net): a pure MLP never imports torch
        big = _threads.torch_in_use() and a.size * b.shape[-1] >= _TORCH_MATMUL_MIN
        fast = _torch_for_numpy(self) if big else None
        if fast is not None and a.dtype == b.dtype and a.dtype.kind == "f":
            t = fast.xp
            return t.matmul(t.from_numpy(_torchable(a)), t.from_numpy(_torchable(b))).numpy()
        return a @ b

    def conv2d(self, x, w, stride, pads, dilation, groups):
        """im2col in a channel-first layout + one BLAS product per group (or torch's
        kernel on the same memory when torch is installed: several times faster)."""
        o, cg, kh, kw = w.shape
        fast = _torch_for_numpy(self, x.shape[0] * o * cg * kh * kw * x.shape[2] * x.shape[3] // (stride[0] * stride[1]))
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
        fast = _torch_for_numpy(self, y.size * w.shape[1] * w.shape[2] * w.shape[3])
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

NUMPY = ArrayModuleBackend(np, "numpy")
_TORCH_KERNELS: list = []
#: multiply-adds of NumPy convolutions after which torch is imported for its kernels
#: (measured here: importing torch 2.x costs 4.5 s CPU and 650 MB RSS; NumPy's im2col
#: convolutions run at ~5 GMAC/s of CPU time on small layers, where torch is no faster)
_TORCH_IMPORT_WORK = int(os.environ.get("ONNXVERIFY_TORCH_AFTER", 10**10))
_NUMPY_WORK = [0]
_TORCH_MATMUL_MIN = 1 << 18  # multiply-adds below which NumPy's own product is cheaper than a call into torch


def _torchable(a):
    """``a`` as an array torch.from_numpy accepts (positive strides, writeable, aligned)."""
    if a.flags.writeable and all(s >= 0 for s in a.strides) and a.flags.aligned:
        return a
    return np.array(a)


def _torch_for_numpy(bk, work: int = 0):
    """torch's CPU conv kernels, zero-copy on NumPy arrays, when torch is importable and not
    disabled with ONNXVERIFY_NUMPY_KERNELS=1. None for other backends or without torch.

    ``work``: multiply-adds of the call. While torch is not loaded, NumPy does the work until
    it has done :data:`_TORCH_IMPORT_WORK` multiply-adds in all (about what importing torch
    costs in time, 1e10), then torch is imported: a short run (a small conv net verified in a
    second) never pays for the import, a long one pays it once, at most about twice what
    NumPy alone would have taken up to there (the ski-rental rule)."""
    if bk.xp is not np or os.environ.get("ONNXVERIFY_NUMPY_KERNELS") == "1":
        return None
    if not _TORCH_KERNELS and "torch" not in sys.modules:
        _NUMPY_WORK[0] += work
        if _NUMPY_WORK[0] < _TORCH_IMPORT_WORK:
            return None
    if not _TORCH_KERNELS:
        try:
            from . import get_backend

            _TORCH_KERNELS.append(get_backend("torch"))  # TorchBackend moves the threads to torch
        except BackendError:
            _TORCH_KERNELS.append(None)
    return _TORCH_KERNELS[0]


