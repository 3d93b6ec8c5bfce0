"""``Linear``: ``y = x @ W.T + b`` on the last axis (ONNX ``Gemm`` and ``MatMul`` by a constant)."""
from __future__ import annotations

import numpy as np

from .base import Example, TorchTie, find_submodule, onnx_op, scaled_params
from .generic import AffineRule
from .importing import fail, sample_param
from .registry import register

_RNG = np.random.default_rng(0)
_W = _RNG.normal(size=(5, 4)).astype(np.float32)  # (k, n) for MatMul, (n, k) for Gemm with transB

#: a backward step restricts its products to the used / differing features of the two passes
#: (:meth:`Linear.backward_linear`) when that leaves at most this fraction of the stacked
#: product, on layers of at least ``SHARED_MIN`` features
SHARED_MAX, SHARED_MIN = 0.8, 32


class ConvLikeTie(TorchTie):
    """Weight and bias straight from an ``nn.Linear`` / ``nn.Conv2d``."""

    kind = "weights"

    def params(self):
        w = self.module.weight
        b = self.module.bias
        if b is None:
            import torch

            b = torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
        return {"weight": w, "bias": b}


@register
class Linear(AffineRule):
    """params: ``weight (out, in)``, ``bias (out,)``."""

    op = "Linear"
    mixes = True

    def apply(self, bk, node, x, bias=True):
        w = bk.const(node.params["weight"], x.dtype)
        y = bk.matmul(x, bk.transpose(w, (1, 0)))
        return y + bk.const(node.params["bias"], x.dtype) if bias else y

    def apply_abs(self, bk, node, x):
        w = bk.const(node.params["weight"], x.dtype)
        return bk.matmul(x, bk.transpose(bk.abs(w), (1, 0)))

    def adjoint(self, bk, node, A, in_shapes):
        return [bk.matmul(A, bk.const(node.params["weight"], A.dtype))]

    def backward_linear(self, bk, node, step, AL, AU):
        """As :meth:`AffineRule.backward_linear`, with smaller products when the coefficients
        ``(B, K, out)`` are zero on some output features (dead ReLU neurons) or the two passes
        equal on some (ReLU-like steps leave them equal on stable neurons): over the features
        ``N`` where either pass is non-zero and ``S`` where they differ,
        ``AL @ W = AL[..., N] @ W[N]`` and ``AU @ W = AL @ W + (AU - AL)[..., S] @ W[S]``:
        ``K (|N| + |S|) in`` multiply-adds instead of ``2 K out in`` (``K |N| in`` instead of
        ``K out in`` for one shared pass)."""
        n = node.shape[0] if len(node.shape) == 1 else 0
        if n < SHARED_MIN or len(AL.shape) != 3:
            return super().backward_linear(bk, node, step, AL, AU)
        two = AU is not None and AU is not AL
        D = AU - AL if two else None
        used = lambda A: bk.to_numpy(bk.amax(bk.reshape(bk.abs(A), (-1, n)), axis=0)) != 0  # noqa: E731 (NaN: used)
        differ = used(D) if two else np.zeros(n, dtype=bool)
        N, S = np.flatnonzero(used(AL) | differ), np.flatnonzero(differ)
        if len(N) + len(S) > SHARED_MAX * (2 if two else 1) * n:
            return super().backward_linear(bk, node, step, AL, AU)
        w = bk.const(node.params["weight"], AL.dtype)

        def product(A, cols):  # (B, K, in)
            if len(cols) == n:
                return bk.matmul(A, w)
            if len(cols) == 0:
                return bk.zeros(tuple(A.shape[:2]) + (w.shape[1],), dtype=A.dtype)
            return bk.matmul(bk.take(A, cols, 2), bk.take(w, cols, 0))

        off = bk.reshape(step.offset, (-1,))
        lo, bl = product(AL, N), bk.einsum("bkn,n->bk", AL, off)
        if not two:
            return [(lo, None if AU is None else lo)], (bl, None if AU is None else bl)
        hi = lo + product(D, S) if len(S) else lo
        return [(lo, hi)], (bl, bk.einsum("bkn,n->bk", AU, off))

    def adjoint_rows(self, bk, node, idx, in_shapes, dtype):
        """Unit rows through the transpose are rows of the weight: a gather, no product. Only
        for a 1-D sample ``(in,)``: on ``(S, in)`` (a token axis) a flat neuron index mixes the
        token and the output feature, so the engine's one-hot path is used (None)."""
        if len(in_shapes[0]) != 1:
            return None
        w = bk.const(node.params["weight"], dtype)
        return [w[bk.asarray(idx)]]

    def absorb_channel_affine(self, node, scale, shift):
        per_out = [_per_last_axis(p, node.shape) for p in (scale, shift)]
        if any(p is None for p in per_out):
            return None
        return scaled_params(node.params, *per_out)

    def torch_tie(self, node, submodule):
        from torch import nn

        m = find_submodule(submodule, nn.Linear)
        return ConvLikeTie(m) if m is not None else None

    # -- import --------------------------------------------------------------------------------------
    @onnx_op("Gemm", since=1, examples=(
        Example(((2, 5), _W.T.copy(), np.arange(4, dtype=np.float32)), {"transB": 1}),
        Example(((3, 5), _W, np.float32(0.5)), {"alpha": 0.5, "beta": 2.0}),
    ))
    def convert_gemm(self, ctx, node, attrs, label):
        a, b = node.input[0], node.input[1]
        if ctx.is_const(a) or not ctx.is_const(b):
            fail(label, "Gemm", "only Gemm(computed A, constant B) is supported")
        if attrs.get("transA", 0):
            fail(label, "Gemm", "transA=1 on a computed input mixes the batch axis")
        if len(ctx.shape_of(a)) != 1:
            fail(label, "Gemm", f"input A must be 2-D (batch, k), got sample shape {ctx.shape_of(a)}")
        B = ctx.const(b).astype(np.float32)
        W = (B if attrs.get("transB", 0) else B.T) * np.float32(attrs.get("alpha", 1.0))
        bias = np.zeros(W.shape[0], dtype=np.float32)
        if len(node.input) > 2 and node.input[2]:
            c = ctx.const(node.input[2]).astype(np.float32) * np.float32(attrs.get("beta", 1.0))
            bias = bias + np.broadcast_to(sample_param(c, 2, label, "Gemm"), bias.shape)
        ctx.add(node.output[0], "Linear", [ctx.computed(a)], {"weight": np.ascontiguousarray(W), "bias": bias},
                source=label)

    @onnx_op("MatMul", since=1, examples=(Example(((2, 5), _W)), Example(((1, 3, 5), _W)),
                                          Example(((2, 3, 4), (2, 4, 5))), Example(((1, 2, 3, 4), (1, 2, 4, 3)), low=-1.0),
                                          Example(((2, 2, 3, 4), (2, 1, 4, 5)))))
    def convert_matmul(self, ctx, node, attrs, label):
        a, b = node.input
        if not ctx.is_const(a) and not ctx.is_const(b):  # two computed tensors (ops/products.py)
            sa, sb = ctx.shape_of(a), ctx.shape_of(b)
            if len(sa) < 2 or len(sa) != len(sb) or sa[-1] != sb[-2]:
                fail(label, "MatMul", f"computed operands of sample shapes {sa} @ {sb}: only equal ranks >= 2 "
                                      "(batch axis first) with matching inner sizes are supported")
            try:
                np.broadcast_shapes(sa[:-2], sb[:-2])
            except ValueError:
                fail(label, "MatMul", f"leading axes of {sa} and {sb} do not broadcast")
            ctx.add(node.output[0], "MatMul", [ctx.computed(a), ctx.computed(b)], source=label)
            return
        if ctx.is_const(a) or not ctx.is_const(b):
            fail(label, "MatMul", "only MatMul(computed, constant matrix) is supported")
        B = ctx.const(b).astype(np.float32)
        if B.ndim != 2:
            fail(label, "MatMul", f"the constant operand must be a matrix, got shape {B.shape}")
        if len(ctx.shape_of(a)) < 1 or ctx.shape_of(a)[-1] != B.shape[0]:
            fail(label, "MatMul", f"shape mismatch: {ctx.shape_of(a)} @ {B.shape}")
        ctx.add(node.output[0], "Linear", [ctx.computed(a)],
                {"weight": np.ascontiguousarray(B.T), "bias": np.zeros(B.shape[1], dtype=np.float32)}, source=label)


def _per_last_axis(p, shape):
    """``p`` (broadcastable to ``shape``) as a vector over the last axis, or None when it
    varies along other axes."""
    p = np.asarray(p)
    if p.ndim > len(shape):
        return None
    full = np.broadcast_to(p, shape).reshape(-1, shape[-1])
    return full[0] if np.all(full == full[:1]) else None
