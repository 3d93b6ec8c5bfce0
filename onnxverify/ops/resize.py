"""``Resize`` (opsets 10-21) and ``Upsample`` (7-9) of a computed tensor with constant scales or
sizes, modes ``nearest``, ``linear`` and ``cubic``: a linear map with fixed taps and weights
(an index map, :mod:`.indexmap`), built per axis and combined as a tensor product.

Per resized axis (input length ``L``, output length ``O``, scale ``s``), each output index
``i`` maps to a coordinate ``x`` of the input (``coordinate_transformation_mode``) and then:
nearest -- one tap (``nearest_mode`` rounding, clamped to ``[0, L - 1]``); linear -- two taps
around ``x`` clamped to ``[0, L - 1]``; cubic -- four taps ``floor(x) - 1 .. floor(x) + 2``
with Keys' weights (``cubic_coeff_a``), edge-replicated or, with ``exclude_outside``,
dropped and renormalised. ``tf_crop_and_resize`` writes ``extrapolation_value`` outside the
ROI. Coordinates are computed in float32 as onnxruntime does. Opset 10 and Upsample use
onnxruntime's legacy rules (``asymmetric`` coordinates; nearest rounds down when upsampling
and up when downsampling).
"""
from __future__ import annotations

import functools
import itertools

import numpy as np

from .base import Example, onnx_op
from .importing import fail, text
from .indexmap import IndexMapRule, add_index_map
from .registry import register

_F = np.float32
_NO_ROI = np.zeros(0, np.float32)


def source_coordinate(i, L, O, s, mode, roi=(0.0, 1.0)):
    """Input coordinate of output indices ``i`` (float32 array) on one axis."""
    i, L, O, s = _F(i), _F(L), _F(O), _F(s)
    if mode == "half_pixel":
        return (i + _F(0.5)) / s - _F(0.5)
    if mode == "half_pixel_symmetric":
        adj = O / (s * L)
        offset = (L / _F(2)) * (_F(1) - adj)
        return offset + (i + _F(0.5)) / s - _F(0.5)
    if mode == "pytorch_half_pixel":
        return (i + _F(0.5)) / s - _F(0.5) if O > 1 else i * _F(0)
    if mode == "align_corners":
        return i * (L - 1) / (O - 1) if O > 1 else i * _F(0)
    if mode == "asymmetric":
        return i / s
    if mode == "tf_half_pixel_for_nn":
        return (i + _F(0.5)) / s
    if mode == "tf_crop_and_resize":
        a, b = _F(roi[0]), _F(roi[1])
        return a * (L - 1) + i * (b - a) * (L - 1) / (O - 1) if O > 1 else i * _F(0) + _F(0.5) * (a + b) * (L - 1)
    raise ValueError(f"coordinate_transformation_mode={mode!r} is not supported")


def _nearest(x, rule, downsampling):
    if rule == "round_prefer_floor":
        return np.where(x == np.floor(x) + _F(0.5), np.floor(x), np.round(x))
    if rule == "round_prefer_ceil":
        return np.where(x == np.floor(x) + _F(0.5), np.ceil(x), np.round(x))
    if rule == "floor":
        return np.floor(x)
    if rule == "ceil":
        return np.ceil(x)
    if rule == "simple":  # onnxruntime's rule before opset 11
        return np.ceil(x) if downsampling else np.trunc(x)
    raise ValueError(f"nearest_mode={rule!r} is not supported")


def _cubic_weights(t, A):
    """Keys' cubic weights of taps ``-1, 0, 1, 2`` at fraction ``t`` -> ``(O, 4)``."""
    def w(d):  # d = distance >= 0
        d = np.abs(d)
        near = ((A + 2) * d - (A + 3)) * d * d + 1
        far = ((A * d - 5 * A) * d + 8 * A) * d - 4 * A
        return np.where(d <= 1, near, np.where(d < 2, far, 0.0))
    return np.stack([w(t + 1), w(t), w(1 - t), w(2 - t)], axis=1)


def axis_taps(L, O, s, p):
    """``(index (O, T), weight (O, T), inside (O,))`` of one axis; ``p`` the resize options."""
    i = np.arange(O)
    x = source_coordinate(i, L, O, s, p["coord"], p["roi"])
    inside = np.ones(O, bool)
    if p["coord"] == "tf_crop_and_resize":
        inside = (x >= 0) & (x <= L - 1)
    if p["mode"] == "nearest":
        idx = np.clip(_nearest(x, p["nearest"], s < 1), 0, L - 1).astype(np.int64)
        return idx[:, None], np.ones((O, 1)), inside
    if p["mode"] == "linear":
        xc = np.clip(x, 0, L - 1).astype(np.float64)
        x0 = np.floor(xc).astype(np.int64)
        x1 = np.minimum(x0 + 1, L - 1)
        w1 = xc - x0
        return np.stack([x0, x1], 1), np.stack([1 - w1, w1], 1), inside
    if p["mode"] == "cubic":
        x = x.astype(np.float64)
        x0 = np.floor(x).astype(np.int64)
        taps = x0[:, None] + np.arange(-1, 3)[None]
        w = _cubic_weights(x - x0, p["cubic_a"])
        if p["exclude_outside"]:
            w = np.where((taps >= 0) & (taps < L), w, 0.0)
            w = w / w.sum(axis=1, keepdims=True)
        return np.clip(taps, 0, L - 1), w, inside
    raise ValueError(f"mode={p['mode']!r} is not supported")


@register
class Resize(IndexMapRule):
    """A fixed linear map: ``y.flat[j] = sum_t weight[t, j] x.flat[index[t, j]]``
    (constant ``extrapolation_value`` outside a tf_crop_and_resize ROI)."""

    op = "Resize"
    mixes = True

    def _resize(self, ctx, node, label, scales=None, sizes=None, roi=None, opts=None, axes=None):
        x = node.input[0]
        in_full = (1,) + ctx.shape_of(x)
        nd = len(in_full)
        p = {"mode": "nearest", "coord": "half_pixel", "nearest": "round_prefer_floor", "cubic_a": -0.75,
             "exclude_outside": 0, "extrapolation": 0.0, "roi": (0.0, 1.0)}
        p.update(opts or {})
        if axes is not None:
            axes = [a + nd if a < 0 else a for a in axes]
        full_axes = axes if axes is not None else list(range(nd))
        if sizes is not None:
            if len(sizes) != len(full_axes):
                fail(label, node.op_type, f"sizes {sizes} do not match {len(full_axes)} axes")
            out = list(in_full)
            for a, v in zip(full_axes, sizes):
                out[a] = int(v)
            scales = [_F(o) / _F(i) for o, i in zip(out, in_full)]
        else:
            if scales is None or len(scales) != len(full_axes):
                fail(label, node.op_type, f"scales {scales} do not match {len(full_axes)} axes")
            full_scales = [1.0] * nd
            for a, v in zip(full_axes, scales):
                full_scales[a] = float(v)
            scales = [_F(v) for v in full_scales]
            out = [int(np.floor(_F(i) * s)) for i, s in zip(in_full, scales)]
        if out[0] != 1 or scales[0] != 1:
            fail(label, node.op_type, "resizing the batch axis is not supported")
        if any(o <= 0 for o in out):
            fail(label, node.op_type, f"the output shape {out} is empty")
        per_axis_roi = [(0.0, 1.0)] * nd
        if p["coord"] == "tf_crop_and_resize":
            if roi is None or len(roi) != 2 * len(full_axes):
                fail(label, node.op_type, "tf_crop_and_resize needs a constant roi")
            for k, a in enumerate(full_axes):
                per_axis_roi[a] = (float(roi[k]), float(roi[k + len(full_axes)]))
        try:
            index, weight, fill = _resize_all(in_full, out, scales, [dict(p, roi=r) for r in per_axis_roi])
        except ValueError as e:
            fail(label, node.op_type, str(e))
        add_index_map(ctx, node.output[0], "Resize", [x], index[:, 0], label, out[1:], weight=weight[:, 0],
                      fill=fill[0])

    def _options(self, attrs, label, op):
        opts = {"mode": text(attrs.get("mode", "nearest")),
                "coord": text(attrs.get("coordinate_transformation_mode", "half_pixel")),
                "nearest": text(attrs.get("nearest_mode", "round_prefer_floor")),
                "cubic_a": float(attrs.get("cubic_coeff_a", -0.75)),
                "exclude_outside": int(attrs.get("exclude_outside", 0)),
                "extrapolation": float(attrs.get("extrapolation_value", 0.0))}
        if int(attrs.get("antialias", 0)):
            opts["antialias"] = True
        policy = text(attrs.get("keep_aspect_ratio_policy", "stretch"))
        if policy != "stretch":
            fail(label, op, f"keep_aspect_ratio_policy={policy!r} is not supported (only 'stretch')")
        return opts

    def _const_list(self, ctx, name, label, op, what):
        if not name:
            return None
        if not ctx.is_const(name):
            fail(label, op, f"the {what} must be constant")
        v = np.asarray(ctx.const(name)).reshape(-1)
        return None if v.size == 0 else v.tolist()

    # -- import --------------------------------------------------------------------------------------
    @onnx_op("Upsample", since=7, examples=(
        Example(((1, 2, 3, 4),), {"scales": [1.0, 1.0, 2.0, 3.0]}, opsets=(8,)),
        Example(((2, 2, 3, 3),), {"scales": [1.0, 1.0, 2.0, 1.5], "mode": "linear"}, opsets=(8,)),
    ))
    def convert_upsample7(self, ctx, node, attrs, label):
        """Upsample 7-8: ``scales`` attribute; asymmetric coordinates."""
        opts = {"mode": text(attrs.get("mode", "nearest")), "coord": "asymmetric", "nearest": "simple"}
        self._resize(ctx, node, label, scales=list(attrs["scales"]), opts=opts)

    @onnx_op("Upsample", since=9, examples=(
        Example(((1, 2, 3, 4), np.array([1.0, 1.0, 2.0, 2.0], np.float32)), {"mode": "linear"}, opsets=(9,)),
        Example(((1, 1, 2, 3), np.array([1.0, 1.0, 3.0, 2.0], np.float32)), {}, opsets=(9,)),
    ))
    def convert_upsample9(self, ctx, node, attrs, label):
        """Upsample 9: ``scales`` input."""
        opts = {"mode": text(attrs.get("mode", "nearest")), "coord": "asymmetric", "nearest": "simple"}
        self._resize(ctx, node, label, scales=self._const_list(ctx, node.input[1], label, "Upsample", "scales"),
                     opts=opts)

    @onnx_op("Resize", since=10, examples=(
        Example(((1, 2, 3, 4), np.array([1.0, 1.0, 2.0, 1.5], np.float32)), {}, opsets=(10,)),
        Example(((1, 2, 4, 4), np.array([1.0, 1.0, 0.5, 1.75], np.float32)), {"mode": "linear"}, opsets=(10,)),
    ))
    def convert_resize10(self, ctx, node, attrs, label):
        """Resize 10: ``scales`` input; onnxruntime's legacy asymmetric rules."""
        opts = {"mode": text(attrs.get("mode", "nearest")), "coord": "asymmetric", "nearest": "simple"}
        self._resize(ctx, node, label, scales=self._const_list(ctx, node.input[1], label, "Resize", "scales"),
                     opts=opts)

    @onnx_op("Resize", since=11, examples=(
        Example(((1, 2, 3, 4), _NO_ROI, np.array([1.0, 1.0, 2.0, 1.5], np.float32)), {}, opsets=(11, 12)),
        Example(((2, 1, 4, 5), _NO_ROI, np.array([1.0, 1.0, 0.6, 1.7], np.float32)),
                {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, opsets=(11, 21)),
        Example(((1, 2, 3, 4), None, np.array([1.0, 1.0, 2.0, 1.5], np.float32)), {}, opsets=(13, 21)),
        Example(((1, 2, 3, 3), None, None, np.array([1, 2, 7, 5], np.int64)),
                {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, opsets=(13, 21)),
        Example(((1, 1, 4, 4), None, np.array([1.0, 1.0, 1.5, 0.75], np.float32)),
                {"mode": "cubic", "exclude_outside": 1}, opsets=(13, 21)),
        Example(((1, 1, 4, 5), None, np.array([1.0, 1.0, 2.0, 2.0], np.float32)),
                {"mode": "cubic", "cubic_coeff_a": -0.5, "coordinate_transformation_mode": "asymmetric"},
                opsets=(13, 21)),
        Example(((1, 1, 3, 5), None, np.array([1.0, 1.0, 2.5, 1.5], np.float32)),
                {"coordinate_transformation_mode": "tf_half_pixel_for_nn", "nearest_mode": "ceil"}, opsets=(13, 21)),
        Example(((1, 1, 5, 4), None, np.array([1.0, 1.0, 0.8, 2.0], np.float32)),
                {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, opsets=(13, 21)),
        Example(((1, 1, 4, 4), np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2], np.float32), None,
                 np.array([1, 1, 3, 5], np.int64)),
                {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                 "extrapolation_value": -1.5}, opsets=(13, 21)),
        Example(((1, 1, 3, 4), None, np.array([2.0, 1.5], np.float32)),
                {"axes": [2, -1], "mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric",
                 "antialias": 1}, opsets=(19, 21)),
        Example(((1, 2, 3, 4), None, None, np.array([5, 2], np.int64)), {"axes": [3, 2], "mode": "nearest",
                                                                          "nearest_mode": "round_prefer_ceil"},
                opsets=(18, 21)),
    ))
    def convert_resize11(self, ctx, node, attrs, label):
        """Resize 11+: inputs ``X, roi, scales, sizes`` (roi for tf_crop_and_resize; scales or
        sizes); attributes for modes, coordinates, rounding, cubic options; 18+: ``axes``,
        ``antialias`` (only when it changes nothing), ``keep_aspect_ratio_policy="stretch"``."""
        ins = list(node.input) + [""] * (4 - len(node.input))
        opts = self._options(attrs, label, "Resize")
        scales = self._const_list(ctx, ins[2], label, "Resize", "scales")
        sizes = self._const_list(ctx, ins[3], label, "Resize", "sizes")
        roi = self._const_list(ctx, ins[1], label, "Resize", "roi")
        if opts.pop("antialias", False) and opts["mode"] != "nearest":
            shrink = [v for v in (scales or []) if v < 1] or (
                [1] if sizes and any(s < d for s, d in zip(sizes, (1,) + ctx.shape_of(ins[0]))) else [])
            if shrink:
                fail(label, "Resize", "antialias=1 when downsampling is not supported")
        axes = attrs.get("axes")
        self._resize(ctx, node, label, scales=None if sizes is not None else scales,
                     sizes=[int(v) for v in sizes] if sizes is not None else None, roi=roi, opts=opts,
                     axes=None if axes is None else [int(a) for a in axes])


def _resize_all(in_full, out_full, scales, per_axis_opts):
    """:func:`resize_map` with options per axis (the ROI differs per axis)."""
    taps = []
    for L, O, s, p in zip(in_full, out_full, scales, per_axis_opts):
        if L == O and s == 1 and p["coord"] != "tf_crop_and_resize":
            taps.append((np.arange(L)[:, None], np.ones((L, 1)), np.ones(L, bool)))
        else:
            taps.append(axis_taps(L, O, s, p))
    return combine(in_full, out_full, taps, per_axis_opts[0]["extrapolation"])


def combine(in_full, out_full, per_axis, extrapolation):
    """Tensor product of per-axis taps -> ``(index (T, *out), weight (T, *out), fill (*out))``."""
    nd = len(in_full)
    strides = np.cumprod((list(in_full[1:]) + [1])[::-1])[::-1]
    view = lambda a, k: a.reshape([-1 if j == k else 1 for j in range(nd)])  # noqa: E731
    index, weight = [], []
    for combo in itertools.product(*[range(t[0].shape[1]) for t in per_axis]):
        idx = sum(view(per_axis[k][0][:, t] * strides[k], k) for k, t in enumerate(combo))
        w = functools.reduce(np.multiply, [view(per_axis[k][1][:, t], k) for k, t in enumerate(combo)])
        index.append(np.broadcast_to(idx, out_full))
        weight.append(np.broadcast_to(w, out_full))
    index, weight = np.stack(index), np.stack(weight)
    inside = np.ones(out_full, bool)
    for k in range(nd):
        inside = inside & view(per_axis[k][2], k)
    return np.where(inside[None], index, -1), np.where(inside[None], weight, 0.0), np.where(inside, 0.0, extrapolation)
