"""Window pooling over ``(N, C, H, W)``: ``MaxPool`` (nonlinear, with a sound linear
relaxation) and ``AvgPool`` (AveragePool and GlobalAveragePool: linear, weights >= 0), and
the ONNX window geometry (pads, ceil mode, divisors) both share."""
from __future__ import annotations

import functools
import math

import numpy as np

from ..backend import window_views
from .base import Example, Maps, OpRule, each_side, onnx_op, unfold
from .generic import AffineRule, flat
from .patches import inner, take, transposed
from .importing import fail, window_pads
from .registry import register


# ---- window geometry (ONNX rules) ----------------------------------------------------------
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


def avg_pool_divisor(hw, kernel, stride, pads, ceil_mode, count_include_pad) -> np.ndarray:
    """Divisor of each AveragePool window, shape ``(Ho, Wo)``: cells inside the input
    (plus explicit pads when ``count_include_pad``); ceil-mode overhang never counts.
    Cached (read-only result)."""
    return _divisor(*(tuple(int(v) for v in a) for a in (hw, kernel, stride, pads)), bool(ceil_mode),
                    bool(count_include_pad))


@functools.lru_cache(maxsize=256)
def _divisor(hw, kernel, stride, pads, ceil_mode, count_include_pad) -> np.ndarray:
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
    div.setflags(write=False)  # shared by the cache
    return div



def _add_pooling(ctx, node, attrs, label, add_pool):
    """Import a pooling node with ``add_pool(out, ir_in, kernel, stride, dilation, pads)``
    (appends one 2-D pool, pads ``(t, l, b, r)``): directly for 2-D inputs, through 2-D pools
    for 1-D and 3-D ones (:func:`onnxverify.ops.lift.pool_nd`)."""
    shape = ctx.shape_of(node.input[0])
    if len(shape) != 3:
        from .lift import pool_nd

        pool_nd(ctx, node, attrs, label, add_pool)
        return
    kernel = tuple(attrs["kernel_shape"])
    stride = tuple(attrs.get("strides", [1, 1]))
    dilation = tuple(attrs.get("dilations", [1, 1]))
    pads = window_pads(attrs, shape[1:], kernel, stride, dilation)
    add_pool(node.output[0], ctx.computed(node.input[0]), kernel, stride, dilation, pads)


@register
class MaxPool(OpRule):
    """attrs: ``kernel``, ``stride``, ``pads`` (t, l, b, r), ``dilation``, ``ceil_mode``.
    Max is monotone in every input, so IBP maps lower to lower and upper to upper.

    Linear relaxation: ``y >= x_j*`` (``j*`` the argmax of the lower bounds in the window);
    ``y <= x_j*`` when that input dominates its window (``l_j* >= u_j`` for all ``j != j*``),
    else ``y <= max_j u_j``."""

    op = "MaxPool"
    monotone = True
    patches = True

    def forward(self, bk, node, x):
        a = node.attrs
        _, widths = pool_geometry(x.shape[2:], a["kernel"], a["stride"], a["pads"], a["dilation"], a["ceil_mode"])
        return bk.max_pool2d(bk.pad(x, widths, value=-np.inf), a["kernel"], a["stride"], a["dilation"])

    def kernel_size(self, node) -> int:
        return int(np.prod(node.attrs["kernel"]))

    def relax(self, bk, node, bounds, strategy):
        """``(select, decided, upper_const)``: ``select`` a list (one per kernel offset) of 0/1
        arrays ``(B, C, Ho, Wo)`` marking ``j*``, ``decided`` a 0/1 array, and ``upper_const``
        the constant upper line ``max_j u_j``. The same for every strategy."""
        (l, u), = bounds
        a = node.attrs
        (ho, wo), widths = pool_geometry(l.shape[2:], a["kernel"], a["stride"], a["pads"], a["dilation"], a["ceil_mode"])
        lw = list(window_views(bk.pad(l, widths, value=-np.inf), a["kernel"], a["stride"], a["dilation"], (ho, wo)))
        uw = list(window_views(bk.pad(u, widths, value=-np.inf), a["kernel"], a["stride"], a["dilation"], (ho, wo)))
        best, idx = lw[0], bk.zeros(lw[0].shape, dtype=l.dtype)
        for k in range(1, len(lw)):
            better = lw[k] > best
            idx = bk.where(better, k * 1.0, idx)
            best = bk.where(better, lw[k], best)
        other_u = None
        upper = uw[0]
        for k in range(len(uw)):
            masked = bk.where(idx == k, -np.inf, uw[k])
            other_u = masked if other_u is None else bk.maximum(other_u, masked)
            upper = bk.maximum(upper, uw[k])
        one, zero = best * 0 + 1, best * 0
        select = [bk.where(idx == k, one, zero) for k in range(len(lw))]
        decided = bk.where(best >= other_u, one, zero)
        return select, decided, upper

    def gather(self, bk, node, x, select):
        """``sum_k select_k * window_k(x)``: x ``(M, C, H, W)`` with ``M`` a multiple of the
        batch of ``select`` (extra leading dims folded in) -> ``(M, C, Ho, Wo)``."""
        a = node.attrs
        ho, wo = select[0].shape[2:]
        _, widths = pool_geometry(x.shape[2:], a["kernel"], a["stride"], a["pads"], a["dilation"], a["ceil_mode"])
        out = None
        for s, win in zip(select, window_views(bk.pad(x, widths), a["kernel"], a["stride"], a["dilation"], (ho, wo))):
            term = bk.reshape(win, (s.shape[0], -1) + tuple(win.shape[1:])) * s[:, None]
            out = term if out is None else out + term
        return bk.reshape(out, (-1,) + tuple(out.shape[2:]))

    def scatter(self, bk, node, A, select, in_hw):
        """Adjoint of :meth:`gather`: A ``(B, K, C, Ho, Wo)`` -> ``(B, K, C, H, W)``."""
        a = node.attrs
        (ho, wo), widths = pool_geometry(in_hw, a["kernel"], a["stride"], a["pads"], a["dilation"], a["ceil_mode"])
        hp = in_hw[0] + widths[2][0] + widths[2][1]
        wp = in_hw[1] + widths[3][0] + widths[3][1]
        out = bk.zeros(tuple(A.shape[:3]) + (hp, wp), dtype=A.dtype)
        (_, kw), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a["dilation"]
        for k, s in enumerate(select):
            i, j = divmod(k, kw)
            r0, c0 = i * dh, j * dw
            out[:, :, :, r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw] += A * s[:, None]
        return out[:, :, :, widths[2][0]:widths[2][0] + in_hw[0], widths[3][0]:widths[3][0] + in_hw[1]]

    def forward_linear(self, bk, node, relax, maps):
        select, decided, upper = relax
        (m,) = maps
        B, n0 = m.Lk.shape[:2]
        gk = lambda k: unfold(bk, self.gather(bk, node, bk.reshape(k, (B * n0,) + tuple(k.shape[2:])), select), B, n0)  # noqa: E731
        gc = lambda c: self.gather(bk, node, c, select)  # noqa: E731
        return Maps(gk(m.Lk), gc(m.Lc), gk(m.Uk) * decided[:, None], gc(m.Uc) * decided + (1 - decided) * upper)

    def backward_linear(self, bk, node, step, AL, AU):
        select, decided, upper_c = step.relax
        in_hw = tuple(step.in_shapes[0][1:])
        dec = decided[:, None]

        def side(A, upper):
            lower_part, upper_part = (bk.neg(A), bk.pos(A)) if upper else (bk.pos(A), bk.neg(A))
            # lower line y >= x_j*, upper line y <= x_j* (decided) or max u (not decided)
            bias = bk.sum(flat(bk, upper_part * (1 - dec) * upper_c[:, None], 2), axis=2)
            return (self.scatter(bk, node, lower_part + upper_part * dec, select, in_hw),), bias

        return each_side(AL, AU, side)

    def backward_patches(self, bk, node, step, PL, PU):
        """:meth:`backward_linear` on patches: the lines' arrays (``decided``, the constant
        upper line, one selection per kernel offset) read once per group's window, then each
        row's window scattered through the kernel offsets onto an input window of
        ``(ph - 1) * s + d * (k - 1) + 1`` at ``top * s - pad``."""
        select, decided, upper_c = step.relax
        a = node.attrs
        (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["stride"], a["dilation"]
        in_shape = tuple(step.in_shapes[0])
        _, widths = pool_geometry(in_shape[1:], a["kernel"], a["stride"], a["pads"], a["dilation"], a["ceil_mode"])
        C = decided.shape[1]
        arrays = bk.concat([decided, upper_c] + list(select), axis=1)
        shared = PU is None or PU is PL or PU.same_geometry(PL)
        t_l = take(bk, arrays, PL)
        new, biases = [], []
        for s, P in enumerate((PL, PU)):
            if P is None:
                new.append(None)
                biases.append(None)
                continue
            t = t_l if (s == 0 or shared) else take(bk, arrays, P)
            dec, up = t[:, :, :, :C], t[:, :, :, C:2 * C]
            A = P.grouped(bk)
            lower_part, upper_part = (bk.pos(A), bk.neg(A)) if s == 0 else (bk.neg(A), bk.pos(A))
            through = lower_part + upper_part * dec
            biases.append(inner(bk, P, upper_part * (1 - dec), up))
            B, U, G, _, ph, pw = A.shape
            size = ((ph - 1) * sh + dh * (kh - 1) + 1, (pw - 1) * sw + dw * (kw - 1) + 1)
            out = bk.zeros((B * U * G, C) + size, dtype=P.data.dtype)
            for k in range(kh * kw):
                i, j = divmod(k, kw)
                term = bk.reshape(through * t[:, :, :, (2 + k) * C:(3 + k) * C], (B * U * G, C, ph, pw))
                out[:, :, i * dh:i * dh + sh * (ph - 1) + 1:sh, j * dw:j * dw + sw * (pw - 1) + 1:sw] += term
            new.append(transposed(bk, P, out, a["stride"], (widths[2][0], widths[3][0]), in_shape))
        return [tuple(new)], tuple(biases)

    def vjp(self, bk, node, g, xs, y):
        x = xs[0]
        select, _, _ = self.relax(bk, node, [(x, x)], "adaptive")
        return [self.scatter(bk, node, g[:, None], select, tuple(x.shape[2:]))[:, 0]]

    @onnx_op("MaxPool", since=1, examples=(
        Example(((1, 2, 5, 6),), {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Example(((2, 1, 7, 7),), {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1], "ceil_mode": 1},
                opsets=(10, 21)),
        Example(((1, 2, 6, 6),), {"kernel_shape": [2, 2], "dilations": [2, 1]}, opsets=(10, 21)),
        Example(((2, 3, 9),), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
        Example(((1, 2, 5, 4, 5),), {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 0],
                                     "ceil_mode": 1}, opsets=(10, 21)),
    ))
    def convert(self, ctx, node, attrs, label):
        """2-D MaxPool; 1-D and 3-D through 2-D pools (:func:`onnxverify.ops.lift.pool_nd`)."""
        if len(node.output) > 1 and node.output[1]:
            fail(label, "MaxPool", "the Indices output is not supported")
        ceil = bool(attrs.get("ceil_mode", 0))

        def add_pool(out, ir_in, kernel, stride, dilation, pads):
            return ctx.add(out, "MaxPool", [ir_in], attrs={"kernel": tuple(kernel), "stride": tuple(stride),
                                                           "pads": tuple(pads), "dilation": tuple(dilation),
                                                           "ceil_mode": ceil}, source=label)

        _add_pooling(ctx, node, attrs, label, add_pool)

    @onnx_op("GlobalMaxPool", since=1, examples=(Example(((2, 3, 4, 5),)), Example(((1, 2, 6),)),
                                                 Example(((1, 2, 3, 2, 2),))))
    def convert_global(self, ctx, node, attrs, label):
        """The maximum over all spatial positions of each channel (any rank)."""
        from .lift import global_pool

        def add_pool(out, ir_in, kernel, stride, dilation, pads):
            return ctx.add(out, "MaxPool", [ir_in], attrs={"kernel": tuple(kernel), "stride": tuple(stride),
                                                           "pads": tuple(pads), "dilation": tuple(dilation),
                                                           "ceil_mode": False}, source=label)

        global_pool(ctx, node, label, add_pool)


@register
class AvgPool(AffineRule):
    """attrs: ``kernel``, ``stride``, ``pads``, ``ceil_mode``, ``count_include_pad``.
    A linear map with non-negative weights."""

    op = "AvgPool"
    mixes = True
    patches = True

    def apply(self, bk, node, x, bias=True):
        a = node.attrs
        _, widths = pool_geometry(x.shape[2:], a["kernel"], a["stride"], a["pads"], (1, 1), a["ceil_mode"])
        total = bk.sum_pool2d(bk.pad(x, widths), a["kernel"], a["stride"])
        div = avg_pool_divisor(x.shape[2:], a["kernel"], a["stride"], a["pads"], a["ceil_mode"], a["count_include_pad"])
        return total / bk.const(div, x.dtype)

    def adjoint(self, bk, node, A, in_shapes):
        """Each output spreads ``A / divisor`` over its window: a depthwise transposed
        convolution with a kernel of ones (ceil-mode overhang is cropped away)."""
        a = node.attrs
        c, h, w = in_shapes[0]
        _, widths = pool_geometry((h, w), a["kernel"], a["stride"], a["pads"], (1, 1), a["ceil_mode"])
        div = avg_pool_divisor((h, w), a["kernel"], a["stride"], a["pads"], a["ceil_mode"], a["count_include_pad"])
        ones = bk.const(_ones_kernel(c, tuple(a["kernel"])), A.dtype)
        pads = (widths[2][0], widths[3][0], widths[2][1], widths[3][1])
        return [bk.conv_transpose2d(A / bk.const(div, A.dtype), ones, a["stride"], pads, (1, 1), c, (h, w))]

    def adjoint_patches(self, bk, node, P, in_shapes):
        """Each row's window divided by the divisors there, then spread over the kernel (a
        depthwise transposed convolution with ones) onto an input window at
        ``top * s - pad``."""
        a = node.attrs
        c, h, w = in_shapes[0]
        _, widths = pool_geometry((h, w), a["kernel"], a["stride"], a["pads"], (1, 1), a["ceil_mode"])
        div = avg_pool_divisor((h, w), a["kernel"], a["stride"], a["pads"], a["ceil_mode"], a["count_include_pad"])
        inv = bk.const(_reciprocal(div), P.data.dtype)
        A = P.grouped(bk) * take(bk, bk.reshape(inv, (1, 1) + tuple(div.shape)), P)
        B, U, G, _, ph, pw = A.shape
        (kh, kw), (sh, sw) = a["kernel"], a["stride"]
        size = ((ph - 1) * sh + kh, (pw - 1) * sw + kw)
        ones = bk.const(_ones_kernel(c, tuple(a["kernel"])), P.data.dtype)
        out = bk.conv_transpose2d(bk.reshape(A, (B * U * G, c, ph, pw)), ones, a["stride"], (0, 0, 0, 0), (1, 1), c, size)
        return [transposed(bk, P, out, a["stride"], (widths[2][0], widths[3][0]), in_shapes[0])]

    def kernel_size(self, node) -> int:
        return int(np.prod(node.attrs["kernel"]))

    @onnx_op("AveragePool", since=1, examples=(
        Example(((1, 2, 5, 6),), {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Example(((2, 1, 7, 6),), {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1],
                                  "count_include_pad": 1}),
        Example(((1, 2, 7, 7),), {"kernel_shape": [2, 3], "strides": [2, 2], "ceil_mode": 1}, opsets=(10, 21)),
        Example(((2, 3, 8),), {"kernel_shape": [3], "strides": [2], "pads": [2, 1]}),
        Example(((1, 2, 5, 4, 5),), {"kernel_shape": [2, 2, 3], "strides": [2, 1, 2], "pads": [1, 1, 0, 0, 1, 1],
                                     "count_include_pad": 1}),
        Example(((1, 1, 5, 5, 4),), {"kernel_shape": [3, 2, 2], "strides": [2, 2, 1], "pads": [1, 0, 1, 1, 1, 0],
                                     "ceil_mode": 1}, opsets=(10, 21)),
    ))
    def convert(self, ctx, node, attrs, label):
        """2-D AveragePool; 1-D and 3-D through 2-D pools (:func:`onnxverify.ops.lift.pool_nd`)."""
        if any(int(d) != 1 for d in attrs.get("dilations", [])):
            fail(label, "AveragePool", "dilations are not supported")
        extra = {"ceil_mode": bool(attrs.get("ceil_mode", 0)), "count_include_pad": bool(attrs.get("count_include_pad", 0))}

        def add_pool(out, ir_in, kernel, stride, dilation, pads):
            return ctx.add(out, "AvgPool", [ir_in], attrs={"kernel": tuple(kernel), "stride": tuple(stride),
                                                           "pads": tuple(pads), **extra}, source=label)

        _add_pooling(ctx, node, attrs, label, add_pool)

    @onnx_op("GlobalAveragePool", since=1, examples=(Example(((2, 3, 4, 5),)), Example(((1, 2, 6),)),
                                                     Example(((2, 2, 3, 2, 2),))))
    def convert_global(self, ctx, node, attrs, label):
        """The mean over all spatial positions of each channel (any rank)."""
        from .lift import global_pool

        def add_pool(out, ir_in, kernel, stride, dilation, pads):
            return ctx.add(out, "AvgPool", [ir_in], attrs={"kernel": tuple(kernel), "stride": (1, 1),
                                                           "pads": (0, 0, 0, 0), "ceil_mode": False,
                                                           "count_include_pad": False}, source=label)

        global_pool(ctx, node, label, add_pool)


@functools.lru_cache(maxsize=256)
def _reciprocal_cached(div_bytes, shape) -> np.ndarray:
    r = 1.0 / np.frombuffer(div_bytes).reshape(shape)
    r.setflags(write=False)
    return r


def _reciprocal(div: np.ndarray) -> np.ndarray:
    """``1 / div`` of a cached divisor array, itself cached (one array per divisor, so the
    backend's constant cache converts it once)."""
    return _reciprocal_cached(np.ascontiguousarray(div, dtype=np.float64).tobytes(), div.shape)


@functools.lru_cache(maxsize=64)
def _ones_kernel(c: int, kernel: tuple) -> np.ndarray:
    k = np.ones((c, 1) + kernel)
    k.setflags(write=False)
    return k
