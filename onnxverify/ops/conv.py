"""``Conv``: 2-D convolution of a computed ``(C, H, W)`` tensor by constant weights.

Its adjoint is the transposed convolution; restricted to an output window it only touches
the window's receptive field (:meth:`Conv.adjoint_window`), which is what makes CROWN's
tiled backward passes cheap on conv nets.
"""
from __future__ import annotations

import numpy as np

from .base import Example, find_submodule, onnx_op, scaled_params
from .generic import AffineRule
from .importing import fail
from .linear import ConvLikeTie
from .patches import transposed
from .registry import register

_RNG = np.random.default_rng(1)
_W = _RNG.normal(size=(4, 3, 3, 2)).astype(np.float32)
_B = _RNG.normal(size=(4,)).astype(np.float32)
_WG = _RNG.normal(size=(4, 1, 2, 2)).astype(np.float32)


@register
class Conv(AffineRule):
    """params: ``weight (O, C/groups, kh, kw)``, ``bias (O,)``; attrs: ``stride``, ``pads``
    (top, left, bottom, right), ``dilation``, ``groups``."""

    op = "Conv"
    windowed = True
    patches = True
    mixes = True

    def apply(self, bk, node, x, bias=True, weight=None):
        a = node.attrs
        w = bk.const(node.params["weight"], x.dtype) if weight is None else weight
        y = bk.conv2d(x, w, a["stride"], a["pads"], a["dilation"], a["groups"])
        if bias:
            y = y + bk.reshape(bk.const(node.params["bias"], x.dtype), (-1, 1, 1))
        return y

    def apply_abs(self, bk, node, x):
        return self.apply(bk, node, x, bias=False, weight=bk.const(node.params["weight"], x.dtype, absolute=True))

    def adjoint(self, bk, node, A, in_shapes):
        a = node.attrs
        w = bk.const(node.params["weight"], A.dtype)
        return [bk.conv_transpose2d(A, w, a["stride"], a["pads"], a["dilation"], a["groups"], tuple(in_shapes[0][1:]))]

    def adjoint_window(self, bk, node, A, win, in_shapes):
        """Transpose restricted to an output window: ``A (M, O, h, w)`` on rows ``r0:r1`` and
        columns ``c0:c1`` -> the coefficients on the receptive field and that input window."""
        a = node.attrs
        r0, r1, c0, c1 = win
        w = bk.const(node.params["weight"], A.dtype)
        (sh, sw), (dh, dw), (kh, kw) = a["stride"], a["dilation"], tuple(w.shape[2:])
        H, W = in_shapes[0][1:]
        base_h, base_w = (r1 - r0 - 1) * sh + dh * (kh - 1) + 1, (c1 - c0 - 1) * sw + dw * (kw - 1) + 1
        out = bk.conv_transpose2d(A, w, a["stride"], (0, 0, 0, 0), a["dilation"], a["groups"], (base_h, base_w))
        off_r, off_c = r0 * sh - a["pads"][0], c0 * sw - a["pads"][1]
        lo_r, hi_r = max(0, off_r), min(H, off_r + base_h)
        lo_c, hi_c = max(0, off_c), min(W, off_c + base_w)
        out = out[:, :, lo_r - off_r:hi_r - off_r, lo_c - off_c:hi_c - off_c]
        return [(out, (lo_r, hi_r, lo_c, hi_c))]

    def adjoint_patches(self, bk, node, P, in_shapes):
        """Kernel composition on each row's window: ``P.data (B, K, O, ph, pw)`` -> the
        transposed convolution of every window on its own (no padding), ``(B, K, C,
        (ph - 1) * sh + dh * (kh - 1) + 1, ...)``, at ``top * sh - pad_top`` of the input."""
        a = node.attrs
        w = bk.const(node.params["weight"], P.data.dtype)
        B, K, O, ph, pw = P.data.shape
        (sh, sw), (dh, dw), (kh, kw) = a["stride"], a["dilation"], tuple(w.shape[2:])
        size = ((ph - 1) * sh + dh * (kh - 1) + 1, (pw - 1) * sw + dw * (kw - 1) + 1)
        out = bk.conv_transpose2d(bk.reshape(P.data, (B * K, O, ph, pw)), w, a["stride"], (0, 0, 0, 0),
                                  a["dilation"], a["groups"], size)
        return [transposed(bk, P, out, a["stride"], a["pads"][:2], in_shapes[0])]

    def kernel_size(self, node) -> int:
        return int(np.prod(node.params["weight"].shape[2:]))

    def absorb_channel_affine(self, node, scale, shift):
        per_channel = []
        for p in (scale, shift):
            flat = np.broadcast_to(p, node.shape).reshape(node.shape[0], -1)
            if not np.all(flat == flat[:, :1]):
                return None
            per_channel.append(flat[:, 0])
        return scaled_params(node.params, *per_channel)

    def torch_tie(self, node, submodule):
        from torch import nn

        m = find_submodule(submodule, nn.Conv2d)
        return ConvLikeTie(m) if m is not None else None

    # -- import --------------------------------------------------------------------------------------
    @onnx_op("Conv", since=1, examples=(
        Example(((1, 3, 6, 5), _W, _B), {"pads": [1, 0, 1, 1]}),
        Example(((2, 3, 7, 7), _W), {"strides": [2, 1], "auto_pad": "SAME_UPPER"}),
        Example(((1, 3, 7, 8), _W), {"dilations": [1, 2], "pads": [2, 1, 0, 1]}),
        Example(((1, 4, 5, 5), _WG), {"group": 4, "auto_pad": "VALID"}),
        Example(((2, 3, 9), _W[:, :, 0], _B), {"strides": [2], "pads": [1, 2], "dilations": [2]}),
        Example(((1, 4, 7), _WG[:, :, 0]), {"group": 4, "auto_pad": "SAME_LOWER"}),
        Example(((1, 3, 4, 5, 4), np.stack([_W, -_W], axis=2)[:, :, :, :2], _B),
                {"strides": [2, 1, 1], "pads": [1, 0, 1, 0, 1, 1], "dilations": [1, 1, 2]}),
        Example(((2, 4, 3, 4, 4), np.stack([_WG, _WG * 0.5, -_WG], axis=2)), {"group": 4, "auto_pad": "SAME_UPPER"}),
    ))
    def convert(self, ctx, node, attrs, label):
        """2-D Conv; 1-D as 2-D with a unit row axis; 3-D with depth folded into channels
        (:mod:`onnxverify.ops.lift`)."""
        from .lift import conv3d_as_2d, reshape, window_attrs

        x, w = node.input[0], node.input[1]
        if ctx.is_const(x) or not ctx.is_const(w):
            fail(label, "Conv", "only Conv(computed X, constant W) is supported")
        W = ctx.const(w).astype(np.float32)
        shape = ctx.shape_of(x)
        nd = len(shape) - 1
        if nd not in (1, 2, 3) or W.ndim != nd + 2:
            fail(label, "Conv", f"only 1-D, 2-D and 3-D convolution is supported (X sample shape {shape}, W {W.shape})")
        groups = int(attrs.get("group", 1))
        if shape[0] != W.shape[1] * groups:
            fail(label, "Conv", f"input has {shape[0]} channels, weight expects {W.shape[1] * groups}")
        kernel, stride, dilation, b, e = window_attrs(attrs, shape[1:], W.shape[2:])
        bias = (ctx.const(node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2]
                else np.zeros(W.shape[0], np.float32))
        out = node.output[0]
        if nd == 2:
            ctx.add(out, "Conv", [ctx.computed(x)], {"weight": W, "bias": bias},
                    {"stride": tuple(stride), "pads": (b[0], b[1], e[0], e[1]), "dilation": tuple(dilation),
                     "groups": groups}, source=label)
        elif nd == 1:
            mid = reshape(ctx, out + "/2d", ctx.computed(x), (shape[0], 1, shape[1]), label)
            y = ctx.add(out + "/conv", "Conv", [mid], {"weight": np.ascontiguousarray(W[:, :, None, :]), "bias": bias},
                        {"stride": (1, stride[0]), "pads": (0, b[0], 0, e[0]), "dilation": (1, dilation[0]),
                         "groups": groups}, source=label)
            reshape(ctx, out, y, (W.shape[0], ctx.probes[y].shape[-1]), label)
        else:
            W2, b2, Do = conv3d_as_2d(W, bias, shape[1:], stride, dilation, b, e, groups, label)
            mid = reshape(ctx, out + "/slices", ctx.computed(x), (shape[0] * shape[1],) + tuple(shape[2:]), label)
            y = ctx.add(out + "/conv", "Conv", [mid], {"weight": W2, "bias": b2},
                        {"stride": tuple(stride[1:]), "pads": (b[1], b[2], e[1], e[2]), "dilation": tuple(dilation[1:]),
                         "groups": groups}, source=label)
            reshape(ctx, out, y, (W.shape[0], Do) + tuple(ctx.probes[y].shape[2:]), label)
