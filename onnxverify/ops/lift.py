"""1-D and 3-D window ops imported as 2-D ones (the converters of Conv and pooling use these).

* 1-D ``(C, L)``: reshaped to ``(C, 1, L)``, a 2-D op with a unit row axis, reshaped back.
* 3-D pooling ``(C, D, H, W)``: max and average are separable over a box window, so a 2-D
  pool over ``(H, W)`` of every depth slice ``(C * D, H, W)`` followed by a 2-D pool of
  kernel ``(kd, 1)`` over ``(C, D, Ho * Wo)`` is exactly the 3-D pool (ceil mode and
  divisors are per axis too: the window/box intersection count is a product of per-axis
  counts).
* 3-D convolution: depth folded into channels -- a 2-D convolution from ``C * D`` to
  ``O * Do`` channels whose weight is block-sparse in depth (see :func:`conv3d_as_2d`);
  exact, and cheap while ``D`` is small (refused past :data:`MAX_FOLDED_WEIGHT` values).
"""
from __future__ import annotations

import numpy as np

from .importing import fail, text

#: largest folded 3-D convolution weight (values)
MAX_FOLDED_WEIGHT = 2 ** 24


def spatial_pads(attrs, spatial, kernel, stride, dilation):
    """ONNX ``pads``/``auto_pad`` of an n-D window op as ``(begins, ends)`` per spatial axis."""
    nd = len(spatial)
    auto = text(attrs.get("auto_pad", "NOTSET")) or "NOTSET"
    if auto == "NOTSET":
        p = [int(v) for v in attrs.get("pads", [0] * (2 * nd))]
        return p[:nd], p[nd:]
    if auto == "VALID":
        return [0] * nd, [0] * nd
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, stride, dilation):
        out = -(-size // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins, ends


def window_attrs(attrs, spatial, kernel):
    """``(kernel, stride, dilation, begins, ends)`` lists of an n-D window op."""
    nd = len(spatial)
    kernel = [int(k) for k in kernel]
    stride = [int(v) for v in attrs.get("strides", [1] * nd)]
    dilation = [int(v) for v in attrs.get("dilations", [1] * nd)]
    if not (len(kernel) == len(stride) == len(dilation) == nd):
        raise ValueError(f"kernel {kernel}, strides {stride} and dilations {dilation} do not match {nd} spatial axes")
    begins, ends = spatial_pads(attrs, spatial, kernel, stride, dilation)
    return kernel, stride, dilation, begins, ends


def reshape(ctx, name, ir_in, shape, label) -> str:
    """Append an IR Reshape (a fresh name derived from ``name``); returns its IR name."""
    return ctx.add(name, "Reshape", [ir_in], source=label, shape=tuple(int(d) for d in shape))


def pool_nd(ctx, node, attrs, label, add_pool):
    """A 1-D or 3-D pooling node through 2-D pools. ``add_pool(out, ir_in, kernel, stride,
    dilation, pads)`` appends one 2-D pool (pads ``(t, l, b, r)``) and returns its IR name."""
    x = node.input[0]
    shape = ctx.shape_of(x)
    c, spatial = shape[0], shape[1:]
    kernel, stride, dilation, b, e = window_attrs(attrs, spatial, attrs["kernel_shape"])
    out = node.output[0]
    if len(spatial) == 1:
        mid = reshape(ctx, out + "/2d", ctx.computed(x), (c, 1, spatial[0]), label)
        y = add_pool(out + "/pool", mid, (1, kernel[0]), (1, stride[0]), (1, dilation[0]), (0, b[0], 0, e[0]))
        reshape(ctx, out, y, (c, ctx.probes[y].shape[-1]), label)
        return
    if len(spatial) != 3:
        fail(label, node.op_type, f"only 1-D, 2-D and 3-D pooling is supported (sample shape {shape})")
    d, h, w = spatial
    slices = reshape(ctx, out + "/slices", ctx.computed(x), (c * d, h, w), label)
    hw = add_pool(out + "/hw", slices, tuple(kernel[1:]), tuple(stride[1:]), tuple(dilation[1:]),
                  (b[1], b[2], e[1], e[2]))
    ho, wo = ctx.probes[hw].shape[2:]
    cols = reshape(ctx, out + "/cols", hw, (c, d, ho * wo), label)
    depth = add_pool(out + "/d", cols, (kernel[0], 1), (stride[0], 1), (dilation[0], 1), (b[0], 0, e[0], 0))
    reshape(ctx, out, depth, (c, ctx.probes[depth].shape[2], ho, wo), label)


def global_pool(ctx, node, label, add_pool):
    """Global pooling of any rank: ``(C, *spatial)`` as ``(C, 1, n)`` with a ``(1, n)`` kernel,
    reshaped to ``(C, 1, ..., 1)``."""
    x = node.input[0]
    shape = ctx.shape_of(x)
    if len(shape) < 2:
        fail(label, node.op_type, f"the input needs spatial axes (sample shape {shape})")
    n = int(np.prod(shape[1:], dtype=np.int64))
    out = node.output[0]
    if len(shape) == 3:
        reshape_in, kernel = ctx.computed(x), tuple(shape[1:])
    else:
        reshape_in, kernel = reshape(ctx, out + "/2d", ctx.computed(x), (shape[0], 1, n), label), (1, n)
    y = add_pool(out + ("/pool" if len(shape) != 3 else ""), reshape_in, kernel, (1, 1), (1, 1), (0, 0, 0, 0))
    if len(shape) != 3:
        reshape(ctx, out, y, (shape[0],) + (1,) * (len(shape) - 1), label)


def conv3d_as_2d(W, bias, spatial, stride, dilation, begins, ends, groups, label):
    """Fold depth into channels: ``W (O, C/g, kd, kh, kw)`` on ``(C, D, H, W)`` -> the 2-D
    weight ``(O * Do, C/g * D, kh, kw)`` and bias ``(O * Do,)`` with
    ``W2[o * Do + z, c * D + (z * sd - pd + t * dd)] = W[o, c, t]`` (depth taps outside the
    input are the zero padding), and ``Do``."""
    O, cg, kd = W.shape[:3]
    D = spatial[0]
    Do = (D + begins[0] + ends[0] - dilation[0] * (kd - 1) - 1) // stride[0] + 1
    if Do <= 0:
        fail(label, "Conv", "the 3-D convolution has an empty depth output")
    size = O * Do * cg * D * int(np.prod(W.shape[3:]))
    if size > MAX_FOLDED_WEIGHT:
        fail(label, "Conv", f"3-D convolution folded into 2-D needs a {size}-value weight (depth {D}); too large")
    W2 = np.zeros((O, Do, cg, D) + tuple(W.shape[3:]), dtype=np.float32)
    for z in range(Do):
        for t in range(kd):
            di = z * stride[0] - begins[0] + t * dilation[0]
            if 0 <= di < D:
                W2[:, z, :, di] += W[:, :, t]
    return W2.reshape((O * Do, cg * D) + tuple(W.shape[3:])), np.repeat(bias, Do), Do
