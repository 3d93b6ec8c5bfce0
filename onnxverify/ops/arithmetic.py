"""Elementwise arithmetic: ``Affine`` (``x * scale + shift`` with constants: BatchNormalization,
Add/Sub/Mul/Div by a constant) and ``Add`` / ``Sub`` of two computed tensors."""
from __future__ import annotations

import numpy as np

from .base import Example, TorchTie, find_submodule, onnx_op
from .generic import AffineRule
from .importing import fail, sample_param
from .registry import register

_RNG = np.random.default_rng(2)
_C3 = _RNG.normal(size=(3, 1, 1)).astype(np.float32)
_V = _RNG.uniform(0.5, 2.0, size=(6,)).astype(np.float32)


class BatchNormTie(TorchTie):
    """BatchNorm in train mode uses the statistics of the last clean forward batch (a forward
    hook records them, biased variance, as the layer itself uses them); in eval mode the
    running statistics."""

    kind = "bn"

    def __init__(self, module, shape):
        super().__init__(module)
        self.shape = shape
        self.batch_stats = None
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if module.training:
            x = inputs[0]
            dims = [0] + list(range(2, x.dim()))
            self.batch_stats = (x.mean(dim=dims), x.var(dim=dims, unbiased=False))

    def params(self):
        import torch

        m = self.module
        if m.training:
            if self.batch_stats is None:
                raise RuntimeError("BatchNorm in train mode: run a clean forward pass on the batch before "
                                   "computing bounds (its statistics are used)")
            mean, var = self.batch_stats
        else:
            mean, var = m.running_mean, m.running_var
        gamma = m.weight if m.weight is not None else torch.ones_like(mean)
        beta = m.bias if m.bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + m.eps)
        shift = beta - mean * scale
        return {"scale": scale.reshape(self.shape), "shift": shift.reshape(self.shape)}


@register
class Affine(AffineRule):
    """Elementwise ``y = x * scale + shift``; ``scale``/``shift`` broadcast to the sample shape
    (per-channel ``(C, 1, 1)`` for BatchNorm, scalars for normalisation constants)."""

    op = "Affine"
    windowed = True

    def apply(self, bk, node, x, bias=True):
        y = x * bk.const(node.params["scale"], x.dtype)
        return y + bk.const(node.params["shift"], x.dtype) if bias else y

    def apply_abs(self, bk, node, x):
        return x * bk.abs(bk.const(node.params["scale"], x.dtype))

    def adjoint(self, bk, node, A, in_shapes):
        return [A * bk.const(node.params["scale"], A.dtype)]

    def adjoint_window(self, bk, node, A, win, in_shapes):
        return [(A * _crop(bk.const(node.params["scale"], A.dtype), win), win)]

    def channel_affine(self, node):
        return node.params["scale"], node.params["shift"]

    def torch_tie(self, node, submodule):
        from torch import nn

        m = find_submodule(submodule, nn.modules.batchnorm._BatchNorm)
        return BatchNormTie(m, np.shape(node.params["scale"])) if m is not None else None

    # -- import --------------------------------------------------------------------------------------
    @onnx_op("BatchNormalization", since=1, examples=(
        Example(((2, 3, 4, 4), _C3.ravel(), -_C3.ravel(), _C3.ravel() * 0.3, np.abs(_C3.ravel()) + 0.5),
                {"epsilon": 1e-3}),
    ))
    def convert_bn(self, ctx, node, attrs, label):
        x = node.input[0]
        gamma, beta, mean, var = (ctx.const(n).astype(np.float64) for n in node.input[1:5])
        if attrs.get("training_mode", 0):
            fail(label, "BatchNormalization", "training_mode=1 is not supported (export in eval mode)")
        scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
        shift = beta - mean * scale
        bshape = (-1,) + (1,) * (len(ctx.shape_of(x)) - 1)
        ctx.add(node.output[0], "Affine", [ctx.computed(x)],
                {"scale": scale.astype(np.float32).reshape(bshape), "shift": shift.astype(np.float32).reshape(bshape)},
                source=label)

    def _arith(self, ctx, node, attrs, label):
        op = node.op_type
        a, b = node.input
        if not ctx.is_const(a) and not ctx.is_const(b):
            sa, sb = ctx.shape_of(a), ctx.shape_of(b)
            if op in ("Mul", "Div"):  # products of two computed tensors (ops/products.py)
                if len(sa) != len(sb):
                    fail(label, op, f"computed operands of ranks {len(sa) + 1} and {len(sb) + 1} (their batch axes "
                                    "would not align)")
                try:
                    np.broadcast_shapes(sa, sb)
                except ValueError:
                    fail(label, op, f"operands of shapes {sa} and {sb} do not broadcast")
                if op == "Mul" and a == b:
                    ctx.add(node.output[0], "Pow", [ctx.computed(a)], attrs={"p": 2.0}, source=label)
                    return
                rhs = ctx.computed(b)
                if op == "Div":  # a / b = a * (1 / b)
                    rhs = ctx.add(node.output[0] + "/reciprocal", "Reciprocal", [rhs], source=label)
                ctx.add(node.output[0], "Mul", [ctx.computed(a), rhs], source=label)
                return
            try:
                full = np.broadcast_shapes(sa, sb) if len(sa) == len(sb) else None
            except ValueError:
                full = None
            if full is None:
                fail(label, op, f"operands of shapes {sa} and {sb} do not broadcast (batch axes first)")
            from .tile import broadcast_to  # repeat a size-1 axis (e.g. x - mean(x))

            ctx.add(node.output[0], op, [broadcast_to(ctx, a, full, label), broadcast_to(ctx, b, full, label)],
                    source=label)
            return
        x, c, const_first = (b, ctx.const(a), True) if ctx.is_const(a) else (a, ctx.const(b), False)
        if op == "Div" and const_first:  # c / x = c * (1 / x)
            recip = ctx.add(node.output[0] + "/reciprocal", "Reciprocal", [ctx.computed(x)], source=label)
            x, op = node.output[0] + "/reciprocal", "Mul"
            ctx.set_alias(x, recip)
        rank = len(ctx.shape_of(x)) + 1
        full = np.broadcast_shapes(np.shape(c), (1,) + ctx.shape_of(x))
        if tuple(full) != (1,) + ctx.shape_of(x):
            fail(label, op, f"constant of shape {np.shape(c)} would change the tensor shape to {full}")
        c = sample_param(c, rank, label, op).astype(np.float64)
        one, zero = np.ones_like(c), np.zeros_like(c)
        if op == "Add":
            scale, shift = one, c
        elif op == "Sub":
            scale, shift = (-one, c) if const_first else (one, -c)
        elif op == "Mul":
            scale, shift = c, zero
        else:
            scale, shift = 1.0 / c, zero
        ctx.add(node.output[0], "Affine", [ctx.computed(x)],
                {"scale": scale.astype(np.float32), "shift": shift.astype(np.float32)}, {"onnx_op": op}, source=label)

    _by_const = (Example(((2, 6), _V)), Example((_V, (2, 6))), Example(((1, 3, 2, 2), _C3)))
    _two = (Example(((2, 6), (2, 6))), Example(((2, 3, 4), (2, 3, 1))))
    convert_add = onnx_op("Add", since=1, examples=_by_const + _two)(_arith)
    convert_sub = onnx_op("Sub", since=1, examples=_by_const + _two)(_arith)
    _products = (Example(((2, 6), (2, 6))), Example(((2, 3, 4), (2, 3, 1)), low=-1.5, high=2.5))
    convert_mul = onnx_op("Mul", since=1, examples=_by_const + _products)(_arith)
    convert_div = onnx_op("Div", since=1, examples=(
        Example(((2, 6), _V)), Example(((1, 3, 2, 2), _C3 + 2.0)), Example((_V, (2, 6)), low=0.5, high=3.0),
        Example(((2, 6), (2, 6)), low=0.5, high=3.0), Example(((2, 3, 4), (2, 3, 1)), low=1.0, high=2.0)))(_arith)


def _crop(p, win):
    """Crop a parameter broadcastable to ``(C, H, W)`` to the window's rows/cols."""
    r0, r1, c0, c1 = win
    index = [slice(None)] * p.ndim
    if p.ndim >= 2 and p.shape[-2] > 1:
        index[-2] = slice(r0, r1)
    if p.ndim >= 1 and p.shape[-1] > 1:
        index[-1] = slice(c0, c1)
    return p[tuple(index)]


@register
class Add(AffineRule):
    """Sum of two computed tensors of the same shape (residual connections)."""

    op = "Add"
    windowed = True
    mixes = True

    def apply(self, bk, node, a, b, bias=True):
        return a + b

    def adjoint(self, bk, node, A, in_shapes):
        return [A, A]

    def adjoint_window(self, bk, node, A, win, in_shapes):
        return [(A, win), (A, win)]


@register
class Sub(AffineRule):
    """Difference of two computed tensors of the same shape."""

    op = "Sub"
    windowed = True
    mixes = True

    def apply(self, bk, node, a, b, bias=True):
        return a - b

    def apply_abs(self, bk, node, a, b):
        return a + b

    def adjoint(self, bk, node, A, in_shapes):
        return [A, -A]

    def adjoint_window(self, bk, node, A, win, in_shapes):
        return [(A, win), (-A, win)]
