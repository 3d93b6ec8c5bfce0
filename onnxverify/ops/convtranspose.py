"""``ConvTranspose``: 2-D transposed convolution of a computed ``(C, H, W)`` tensor by constant
weights (1-D is imported as 2-D with a unit axis), with every ONNX attribute: strides,
pads, output_padding, dilations, group, output_shape and auto_pad.

It is the adjoint of a convolution: the op computes the *full* transposed convolution
(``(H - 1) * stride + dilation * (k - 1) + 1`` rows, no padding), then keeps rows
``pad_head .. pad_head + H_out`` (rows past the full size -- output_padding -- are zero, plus
bias). Its own adjoint is therefore a convolution of the coefficients placed in that frame.
"""
from __future__ import annotations

import numpy as np

from .base import Example, onnx_op
from .generic import AffineRule
from .importing import fail, text
from .registry import register

_RNG = np.random.default_rng(5)
_W = _RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)  # (C_in, C_out / group, kh, kw)
_B = _RNG.normal(size=(2,)).astype(np.float32)
_WG = _RNG.normal(size=(4, 1, 2, 3)).astype(np.float32)
_W1 = _RNG.normal(size=(2, 3, 4)).astype(np.float32)


def _frame(bk, z, frame, out_hw):
    """Rows/cols ``head .. head + size`` of ``z (M, C, Hf, Wf)`` (zeros past the end)."""
    (h0, w0), (ho, wo) = frame, out_hw
    hf, wf = z.shape[2:]
    extra_h, extra_w = max(0, h0 + ho - hf), max(0, w0 + wo - wf)
    if extra_h or extra_w:
        z = bk.pad(z, [(0, 0), (0, 0), (0, extra_h), (0, extra_w)])
    return z[:, :, h0:h0 + ho, w0:w0 + wo]


def _unframe(bk, A, frame, full_hw):
    """Adjoint of :func:`_frame`: ``A (M, C, Ho, Wo)`` placed at ``frame`` in ``full_hw``."""
    (h0, w0), (ho, wo), (hf, wf) = frame, A.shape[2:], full_hw
    z = bk.pad(A, [(0, 0), (0, 0), (h0, max(0, hf - h0 - ho)), (w0, max(0, wf - w0 - wo))])
    return z[:, :, :hf, :wf]


@register
class ConvTranspose(AffineRule):
    """params: ``weight (C_in, C_out / groups, kh, kw)``, ``bias (C_out,)``; attrs:
    ``stride``, ``dilation``, ``groups``, ``frame`` (first kept row, col of the full output)."""

    op = "ConvTranspose"
    mixes = True

    def _full_hw(self, node, hw):
        (sh, sw), (dh, dw) = node.attrs["stride"], node.attrs["dilation"]
        kh, kw = node.params["weight"].shape[2:]
        return ((hw[0] - 1) * sh + dh * (kh - 1) + 1, (hw[1] - 1) * sw + dw * (kw - 1) + 1)

    def apply(self, bk, node, x, bias=True, weight=None):
        a = node.attrs
        w = bk.const(node.params["weight"], x.dtype) if weight is None else weight
        full = bk.conv_transpose2d(x, w, a["stride"], (0, 0, 0, 0), a["dilation"], a["groups"],
                                   self._full_hw(node, x.shape[2:]))
        y = _frame(bk, full, a["frame"], node.shape[1:])
        if bias:
            y = y + bk.reshape(bk.const(node.params["bias"], x.dtype), (-1, 1, 1))
        return y

    def apply_abs(self, bk, node, x):
        return self.apply(bk, node, x, bias=False, weight=bk.abs(bk.const(node.params["weight"], x.dtype)))

    def adjoint(self, bk, node, A, in_shapes):
        a = node.attrs
        full = _unframe(bk, A, a["frame"], self._full_hw(node, in_shapes[0][1:]))
        w = bk.const(node.params["weight"], A.dtype)
        return [bk.conv2d(full, w, a["stride"], (0, 0, 0, 0), a["dilation"], a["groups"])]

    def kernel_size(self, node) -> int:
        return int(np.prod(node.params["weight"].shape[2:]))

    # -- import --------------------------------------------------------------------------------------
    @onnx_op("ConvTranspose", since=1, examples=(
        Example(((1, 3, 4, 5), _W, _B), {"strides": [2, 2], "pads": [1, 0, 1, 1], "output_padding": [1, 0]}),
        Example(((2, 4, 3, 3), _WG), {"group": 2, "dilations": [2, 1], "strides": [1, 2]}),
        Example(((1, 3, 3, 4), _W), {"strides": [2, 3], "output_shape": [6, 10]}),
        Example(((1, 3, 3, 3), _W, _B), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        Example(((1, 3, 3, 3), _W), {"strides": [2, 1], "auto_pad": "SAME_LOWER"}),
        Example(((2, 2, 5), _W1), {"strides": [2], "pads": [1, 2]}),
    ))
    def convert(self, ctx, node, attrs, label):
        x, w = node.input[0], node.input[1]
        if ctx.is_const(x) or not ctx.is_const(w):
            fail(label, "ConvTranspose", "only ConvTranspose(computed X, constant W) is supported")
        W = np.asarray(ctx.const(w), dtype=np.float32)
        shape = ctx.shape_of(x)
        nd = len(shape) - 1
        if nd not in (1, 2) or W.ndim != nd + 2:
            fail(label, "ConvTranspose", f"only 1-D and 2-D transposed convolution is supported (X sample shape "
                                         f"{shape}, W {W.shape})")
        groups = int(attrs.get("group", 1))
        if shape[0] != W.shape[0]:
            fail(label, "ConvTranspose", f"input has {shape[0]} channels, the weight expects {W.shape[0]}")
        c_out = W.shape[1] * groups
        bias = (np.asarray(ctx.const(node.input[2]), dtype=np.float32) if len(node.input) > 2 and node.input[2]
                else np.zeros(c_out, np.float32))
        kernel = W.shape[2:]
        get = lambda key, default: [int(v) for v in attrs.get(key, default)]  # noqa: E731
        stride, dilation = get("strides", [1] * nd), get("dilations", [1] * nd)
        out_pad = get("output_padding", [0] * nd)
        pads = get("pads", [0] * (2 * nd))
        out_shape = attrs.get("output_shape")
        auto = text(attrs.get("auto_pad", "NOTSET")) or "NOTSET"
        spatial = shape[1:]
        head, size = [], []
        for k in range(nd):
            eff = dilation[k] * (kernel[k] - 1) + 1
            natural = stride[k] * (spatial[k] - 1) + out_pad[k] + eff
            if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
                target = int(out_shape[-nd + k]) if out_shape is not None else spatial[k] * stride[k]
                total = max(0, natural - target)
                # the ONNX rule: SAME_UPPER puts the odd pad at the tail, NOTSET/SAME_LOWER at the head
                head.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
                size.append(target)
            else:
                if auto == "VALID":
                    pads = [0] * (2 * nd)
                head.append(pads[k])
                size.append(natural - pads[k] - pads[k + nd])
            if size[-1] <= 0:
                fail(label, "ConvTranspose", f"the output would have size {size[-1]} along spatial axis {k}")
        if nd == 1:  # as 2-D with a unit row axis
            W = W[:, :, None, :]
            stride, dilation, head, size = [1] + stride, [1] + dilation, [0] + head, [1] + size
            mid = ctx.add(node.output[0] + "/2d", "Reshape", [ctx.computed(x)], source=label,
                          shape=(shape[0], 1, shape[1]))
        else:
            mid = ctx.computed(x)
        node_attrs = {"stride": tuple(stride), "dilation": tuple(dilation), "groups": groups, "frame": tuple(head)}
        out = node.output[0] + ("/2d_out" if nd == 1 else "")
        name = ctx.add(out, "ConvTranspose", [mid], {"weight": W, "bias": bias}, node_attrs, source=label,
                       shape=(c_out,) + tuple(size))
        if nd == 1:
            ctx.add(node.output[0], "Reshape", [name], source=label, shape=(c_out, size[1]))
