"""Linear (Gemm/MatMul), Conv and Affine (BatchNorm, Sub/Div/Mul/Add by constants)."""
from __future__ import annotations

from ..ir import params_as
from . import AffineRule, register


@register
class Linear(AffineRule):
    """``y = x @ W.T + b`` on the last axis. params: ``weight (out, in)``, ``bias (out,)``."""

    op = "Linear"

    def apply(self, bk, node, x, bias=True):
        y = bk.matmul(x, bk.transpose(params_as(bk, node, "weight", x.dtype), (1, 0)))
        return y + params_as(bk, node, "bias", x.dtype) if bias else y

    def apply_abs(self, bk, node, x):
        w = params_as(bk, node, "weight", x.dtype)
        return bk.matmul(x, bk.transpose(bk.abs(w), (1, 0)))

    def adjoint(self, bk, node, A, in_shapes):
        return [bk.matmul(A, params_as(bk, node, "weight", A.dtype))]


@register
class Conv(AffineRule):
    """2-D convolution. params: ``weight (O, C/groups, kh, kw)``, ``bias (O,)``;
    attrs: ``stride``, ``pads`` (top, left, bottom, right), ``dilation``, ``groups``."""

    op = "Conv"

    def apply(self, bk, node, x, bias=True, weight=None):
        a = node.attrs
        w = params_as(bk, node, "weight", x.dtype) if weight is None else weight
        y = bk.conv2d(x, w, a["stride"], a["pads"], a["dilation"], a["groups"])
        if bias:
            y = y + bk.reshape(params_as(bk, node, "bias", x.dtype), (-1, 1, 1))
        return y

    def apply_abs(self, bk, node, x):
        return self.apply(bk, node, x, bias=False, weight=bk.abs(params_as(bk, node, "weight", x.dtype)))

    def adjoint(self, bk, node, A, in_shapes):
        a = node.attrs
        w = params_as(bk, node, "weight", A.dtype)
        return [bk.conv_transpose2d(A, w, a["stride"], a["pads"], a["dilation"], a["groups"], tuple(in_shapes[0][1:]))]


@register
class Affine(AffineRule):
    """Elementwise ``y = x * scale + shift``; ``scale``/``shift`` broadcast to the sample shape
    (per-channel ``(C, 1, 1)`` for BatchNorm, scalars for normalisation constants)."""

    op = "Affine"

    def apply(self, bk, node, x, bias=True):
        y = x * params_as(bk, node, "scale", x.dtype)
        return y + params_as(bk, node, "shift", x.dtype) if bias else y

    def apply_abs(self, bk, node, x):
        return x * bk.abs(params_as(bk, node, "scale", x.dtype))

    def adjoint(self, bk, node, A, in_shapes):
        return [A * params_as(bk, node, "scale", A.dtype)]
