"""Patches (per-row receptive-field windows of backward coefficients, onnxverify/ops/patches.py):
the patch passes give the dense and the tiled passes' bounds (float64, 1e-6 relative) on conv
nets with stride, padding, dilation, groups, BN, ReLU, AvgPool, MaxPool and residual Adds, on
numpy and torch, and stay sound; the Patches helpers agree with dense arrays."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS

import nets
import onnxverify as ov
import onnxverify.bounds.passes as P
from onnxverify.backend import NUMPY
from onnxverify.onnx.importer import import_model
from onnxverify.onnx.reference import OrtModel
from onnxverify.ops import conv as conv_ops
from onnxverify.ops import pooling
from onnxverify.ops.patches import Patches, add, take, unit_patches, unit_rows


def _strided_net(seed=0):
    """stride 2 + asymmetric pads, dilation 2, groups 2, BN kept separate, AvgPool."""
    b = nets.Builder(seed, (3, 11, 10))
    x = b.conv("input", 3, 6, k=3, stride=2, pads=(1, 0, 2, 1))
    x = b.bn(x, 6)
    x = b.node("Relu", [x])
    x = b.conv(x, 6, 6, k=3, stride=1, pads=(2, 2, 2, 2), dilation=2, group=2)
    x = b.node("Relu", [x])
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 0, 0], count_include_pad=0)
    x = b.conv(x, 6, 4, k=2, stride=1, pads=(0, 0, 0, 0))
    x = b.node("LeakyRelu", [x], alpha=0.1)
    return nets._finish_dense(b, b.flatten(x)), (0.0, 1.0)


def _residual_net(seed=0):
    """Two residual blocks (Add of computed tensors), BN, MaxPool between convs."""
    b = nets.Builder(seed, (2, 10, 10))
    x = b.node("Relu", [b.conv("input", 2, 4, k=3, stride=1)])
    for _ in range(2):
        y = b.node("Relu", [b.bn(b.conv(x, 4, 4, k=3, stride=1), 4)])
        y = b.conv(y, 4, 4, k=3, stride=1)
        x = b.node("Relu", [b.node("Add", [x, y])])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Relu", [b.conv(x, 4, 4, k=3, stride=1)])
    return nets._finish_dense(b, b.flatten(x)), (-1.0, 1.0)


def _pooling_net(seed=0):
    """MaxPool (stride 2, pads, ceil mode) and AvgPool (count_include_pad 0 and 1) between convs
    on a large enough image that patches cross them before covering a node."""
    b = nets.Builder(seed, (2, 16, 15), opset=11)
    x = b.node("Relu", [b.conv("input", 2, 3, k=3, stride=1)])
    x = b.node("MaxPool", [x], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1)
    x = b.node("Relu", [b.conv(x, 3, 3, k=3, stride=1)])
    x = b.node("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0)
    x = b.node("Relu", [b.conv(x, 3, 3, k=3, stride=1)])
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1], count_include_pad=1)
    x = b.node("Relu", [b.conv(x, 3, 2, k=3, stride=1)])
    return nets._finish_dense(b, b.flatten(x)), (0.0, 1.0)


NETS = {"pooling": _pooling_net, "strided": _strided_net, "residual": _residual_net, "convnet": nets.convnet, "resnet": nets.resnet}


def _np(a):
    return np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)


def _bounds(net, iset, backend, method, monkeypatch, patches, tiles=False):
    monkeypatch.setattr(P, "PATCHES", patches)
    monkeypatch.setattr(P, "TILE_ROWS", 2 if tiles else 10**9)
    b = net.bounds(iset, method=method, strategy="adaptive", intersect_ibp=False, dtype=np.float64, backend=backend)
    return _np(b.lower), _np(b.upper)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(NETS))
def test_patch_passes_equal_dense_and_sound(name, backend, monkeypatch):
    rng = np.random.default_rng(3)
    model, (lo, hi) = NETS[name](1)
    net, ort = ov.Network(import_model(model, fuse=False), model=model), OrtModel(model)
    iset = ov.LinfBall(rng.uniform(lo, hi, (3,) + net.input_shape), 0.08, clip=(lo, hi))
    dense = _bounds(net, iset, backend, "crown", monkeypatch, patches=False)
    steps = []
    for cls, meth in ((conv_ops.Conv, "adjoint_patches"), (pooling.AvgPool, "adjoint_patches"),
                      (pooling.MaxPool, "backward_patches")):
        original = getattr(cls, meth)
        monkeypatch.setattr(cls, meth, lambda *a, _o=original, _c=cls.__name__: steps.append(_c) or _o(*a))
    for group in (1, 3, 8):
        monkeypatch.setattr(P, "PATCH_GROUP", group)
        patched = _bounds(net, iset, backend, "crown", monkeypatch, patches=True)
        for p, d in zip(patched, dense):
            np.testing.assert_allclose(p, d, rtol=1e-6, atol=1e-9 * (1 + np.abs(d).max()))
    assert "Conv" in steps, "no convolution was crossed as patches"
    if name == "pooling":
        assert {"AvgPool", "MaxPool"} <= set(steps), "the pools were not crossed as patches"
    if backend == "numpy":  # the tiled (shared-window) passes agree too
        tiled = _bounds(net, iset, backend, "crown", monkeypatch, patches=False, tiles=True)
        for p, t in zip(patched, tiled):
            np.testing.assert_allclose(p, t, rtol=1e-6, atol=1e-9 * (1 + np.abs(t).max()))
    # sound: every sampled output inside
    B = iset.lower.shape[0]
    pts = np.stack([nets.sample_box(rng, iset.lower[i], iset.upper[i], 200) for i in range(B)], 1).astype(np.float32)
    ys = np.stack([ort(pts[:, i]) for i in range(B)], 1).reshape(200, B, -1)
    lo_b, hi_b = (a.reshape(1, B, -1) for a in patched)
    tol = 1e-5 * (1 + np.maximum(np.abs(lo_b), np.abs(hi_b)))
    assert (ys >= lo_b - tol).all() and (ys <= hi_b + tol).all()


@pytest.mark.parametrize("method", ["crown-lbp", "lbp"])
def test_patch_passes_with_forward_maps(method, monkeypatch):
    rng = np.random.default_rng(5)
    model, (lo, hi) = _strided_net(2)
    net = ov.Network(import_model(model, fuse=False), model=model)
    iset = ov.LinfBall(rng.uniform(lo, hi, (2,) + net.input_shape), 0.05, clip=(lo, hi))
    dense = _bounds(net, iset, "numpy", method, monkeypatch, patches=False)
    patched = _bounds(net, iset, "numpy", method, monkeypatch, patches=True)
    for p, d in zip(patched, dense):
        np.testing.assert_allclose(p, d, rtol=1e-6, atol=1e-9 * (1 + np.abs(d).max()))


def _random_patches(rng, B=2, U=5, G=3, C=2, size=(3, 4), shape=(2, 5, 6)):
    data = rng.normal(size=(B, U * G, C) + size)
    top = rng.integers(-2, shape[1] - 1, (B, U))
    left = rng.integers(-3, shape[2] - 1, (B, U))
    return Patches(data, top, left, shape).cleaned(NUMPY)


def _dense_by_loops(Pt):
    B, K = Pt.data.shape[:2]
    C, H, W = Pt.node_shape
    ph, pw = Pt.size
    out = np.zeros((B, K, C, H, W))
    for b in range(B):
        for k in range(K):
            t, l_ = Pt.top[b, k // Pt.group], Pt.left[b, k // Pt.group]
            for i in range(ph):
                for j in range(pw):
                    if 0 <= t + i < H and 0 <= l_ + j < W:
                        out[b, k, :, t + i, l_ + j] = Pt.data[b, k, :, i, j]
    return out


def test_dense_take_and_dot_agree_with_loops():
    rng = np.random.default_rng(0)
    Pt = _random_patches(rng)
    full = _dense_by_loops(Pt)
    np.testing.assert_array_equal(Pt.dense(NUMPY), full)
    x = rng.normal(size=(2,) + Pt.node_shape)
    np.testing.assert_allclose(Pt.dot(NUMPY, x), np.einsum("bkchw,bchw->bk", full, x), rtol=1e-12)
    shared = rng.normal(size=(1,) + Pt.node_shape)
    np.testing.assert_allclose(Pt.dot(NUMPY, shared), np.einsum("bkchw,chw->bk", full, shared[0]), rtol=1e-12)
    per_row = rng.normal(size=Pt.data.shape[:2] + Pt.node_shape)  # one array per row (optimised lines)
    t = take(NUMPY, per_row, Pt)
    got = np.einsum("bugx,bugx->bug", Pt.grouped(NUMPY).reshape(t.shape[:3] + (-1,)), t.reshape(t.shape[:3] + (-1,)))
    np.testing.assert_allclose(got.reshape(2, -1), np.einsum("bkchw,bkchw->bk", full, per_row), rtol=1e-12)


def test_add_of_different_windows():
    rng = np.random.default_rng(1)
    Pt = _random_patches(rng, shape=(2, 9, 9))
    Q = Patches(rng.normal(size=(2, 15, 2, 2, 2)), Pt.top + 1, Pt.left + rng.integers(0, 2, Pt.left.shape),
                Pt.node_shape).cleaned(NUMPY)
    s = add(NUMPY, Pt, Q)
    got = s.dense(NUMPY) if isinstance(s, Patches) else s
    np.testing.assert_allclose(got, _dense_by_loops(Pt) + _dense_by_loops(Q), rtol=1e-12)


@pytest.mark.parametrize("group", [1, 2, 5])
def test_unit_rows_cover_every_neuron_once(group):
    rng = np.random.default_rng(2)
    mask = rng.uniform(size=(3, 4, 5, 6)) < 0.4
    mask[1] = False  # a batch entry without any row
    idx, valid, pos = unit_rows(mask, group)
    G = idx.shape[1] // pos.shape[1]
    for b in range(3):
        rows = idx[b][valid[b]]
        assert sorted(rows.tolist()) == np.flatnonzero(mask[b].reshape(-1)).tolist()
        k = np.flatnonzero(valid[b])
        np.testing.assert_array_equal(idx[b, k] % 30, pos[b, k // G])  # a group's rows share its position
    Pt = unit_patches(NUMPY, idx, valid, pos, (4, 5, 6), np.float64)
    dense = Pt.dense(NUMPY).reshape(3, idx.shape[1], -1)
    want = np.zeros_like(dense)
    bi, ki = np.nonzero(valid)
    want[bi, ki, idx[bi, ki]] = 1.0
    np.testing.assert_array_equal(dense, want)


# ---- patches at the input: the input set concretises them window by window -------------------------
from onnxverify.specs.input_sets import Box, InputSet, LpBall  # noqa: E402


def _input_sets(rng, shape, B):
    x0 = rng.uniform(0, 1, (B,) + shape)
    lo = x0 - rng.uniform(0, 0.3, x0.shape)
    return {"box": Box(lo, lo + rng.uniform(0, 0.5, x0.shape)), "linf": ov.LinfBall(x0, 0.1, clip=(0.0, 1.0)),
            "l2": LpBall(x0, 0.2, 2), "l1": LpBall(x0, 0.3, 1)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["box", "linf", "l2", "l1"])
def test_concretize_patches_equals_dense(kind, backend):
    """Random patches on an input (windows reaching outside it, groups of 3, one window per
    row): the window form equals the dense rows' bound to 1e-12 (float64), both sides."""
    from onnxverify.backend import get_backend

    bk = get_backend(backend)
    rng = np.random.default_rng(7)
    Pt = _random_patches(rng, B=2, U=6, G=3, C=2, size=(3, 4), shape=(2, 5, 6))
    iset = _input_sets(rng, (2, 5, 6), 2)[kind]
    full = _dense_by_loops(Pt).reshape(2, Pt.rows, -1)
    c = rng.normal(size=(2, Pt.rows))
    Pb = Patches(bk.asarray(Pt.data, dtype=np.float64), Pt.top, Pt.left, Pt.node_shape)
    for upper in (False, True):
        want = _np(iset.concretize(bk, bk.asarray(full, dtype=np.float64), bk.asarray(c, dtype=np.float64), upper))
        got = _np(iset.concretize_patches(bk, Pb, bk.asarray(c, dtype=np.float64), upper))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * (1 + np.abs(want).max()))
    if kind in ("l2", "l1"):  # values outside the input are ignored, as the dense rows drop them
        dirty = Patches(bk.asarray(rng.normal(size=Pt.data.shape), dtype=np.float64), Pt.top, Pt.left, Pt.node_shape)
        want = _np(iset.concretize(bk, bk.asarray(_dense_by_loops(Patches(_np(dirty.data), Pt.top, Pt.left, Pt.node_shape))
                                                  .reshape(2, Pt.rows, -1), dtype=np.float64),
                                   bk.asarray(c, dtype=np.float64), True))
        got = _np(iset.concretize_patches(bk, dirty, bk.asarray(c, dtype=np.float64), True))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * (1 + np.abs(want).max()))


def test_concretize_patches_float32_box_is_outward():
    """float32: the box's centre and radius hold the box (radius rounded up), so the window
    bound is never inside the dense float64 bound by more than float32 product rounding."""
    rng = np.random.default_rng(8)
    Pt = _random_patches(rng, B=2, U=6, G=3, C=2, size=(3, 4), shape=(2, 5, 6))
    box = _input_sets(rng, (2, 5, 6), 2)["box"]
    from onnxverify.specs.input_sets import _centre_radius

    mid, rad = _centre_radius(box.lower, box.upper, np.float32)
    assert mid.dtype == rad.dtype == np.float32
    assert (mid.astype(np.float64) - rad <= box.lower).all() and (mid.astype(np.float64) + rad >= box.upper).all()
    full = _dense_by_loops(Pt).reshape(2, Pt.rows, -1)
    c = np.zeros((2, Pt.rows))
    P32 = Patches(Pt.data.astype(np.float32), Pt.top, Pt.left, Pt.node_shape)
    for upper in (False, True):
        want = box.concretize(NUMPY, full, c, upper)
        got = box.concretize_patches(NUMPY, P32, c.astype(np.float32), upper).astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class _Recording(Box):
    """Overrides concretize: the window form must hand it the dense rows."""

    seen = []

    def concretize(self, bk, A, c, upper):
        self.seen.append(tuple(A.shape))
        return super().concretize(bk, A, c, upper)

    def batched(self, input_shape):
        b = super().batched(input_shape)
        return _Recording(b.lower, b.upper)


def _conv_input_net(seed):
    b = nets.Builder(seed, (3, 12, 11))
    x = b.node("Relu", [b.conv("input", 3, 5, k=3, stride=1, pads=(1, 1, 1, 1))])
    x = b.node("Relu", [b.conv(x, 5, 6, k=4, stride=2, pads=(1, 0, 2, 1))])
    x = b.node("Relu", [b.conv(x, 6, 4, k=3, stride=1, pads=(0, 1, 1, 0))])
    return nets._finish_dense(b, b.flatten(x)), (0.0, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["box", "linf", "l2"])
@pytest.mark.parametrize("name", ["input_conv", "pooling", "resnet"])
def test_crown_with_window_concretisation_equals_dense_and_is_sound(name, kind, backend, monkeypatch):
    """CROWN on conv nets: concretising the patches at the input by windows gives the bounds of
    the dense rows (float64, 1e-12 relative), the shortcut is taken, and the bounds hold on
    samples of the set."""
    model, _ = {"input_conv": _conv_input_net, "pooling": _pooling_net, "resnet": nets.resnet}[name](4)
    net, ort = ov.Network(import_model(model, fuse=False), model=model), OrtModel(model)
    rng = np.random.default_rng(11)
    B = 2
    iset = _input_sets(rng, net.input_shape, B)[kind]
    calls = []
    cls = type(iset)
    original = cls.concretize_patches
    monkeypatch.setattr(cls, "concretize_patches", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    fast = _bounds(net, iset, backend, "crown", monkeypatch, patches=True)
    assert calls, "no patches reached the input"
    monkeypatch.setattr(cls, "concretize_patches", InputSet.concretize_patches)  # the dense rows
    dense = _bounds(net, iset, backend, "crown", monkeypatch, patches=True)
    for f, d in zip(fast, dense):
        np.testing.assert_allclose(f, d, rtol=1e-12, atol=1e-12 * (1 + np.abs(d).max()))
    # sound on samples of the set (box corners, or points of the l_2 ball incl. its sphere)
    n = 200
    if kind == "l2":
        d = rng.normal(size=(n, B, int(np.prod(net.input_shape))))
        d *= iset.eps * rng.uniform(0.5, 1, (n, B, 1)) ** 0.1 / np.linalg.norm(d, axis=2, keepdims=True)
        pts = iset.x0[None] + d.reshape((n, B) + net.input_shape)
    else:
        lo, hi = iset.box()
        pts = np.stack([nets.sample_box(rng, lo[i], hi[i], n) for i in range(B)], 1)
    ys = np.stack([ort(pts[:, i].astype(np.float32)) for i in range(B)], 1).reshape(n, B, -1)
    lo_b, hi_b = (a.reshape(1, B, -1) for a in fast)
    tol = 1e-5 * (1 + np.maximum(np.abs(lo_b), np.abs(hi_b)))
    assert (ys >= lo_b - tol).all() and (ys <= hi_b + tol).all()


def test_overridden_concretize_gets_dense_rows(monkeypatch):
    """A Box subclass with its own concretize (BaB's recording boxes) sees dense rows and the
    same bounds."""
    model, _ = _conv_input_net(5)
    net = ov.Network(import_model(model, fuse=False), model=model)
    rng = np.random.default_rng(12)
    box = _input_sets(rng, net.input_shape, 1)["box"]
    rec = _Recording(box.lower, box.upper)
    _Recording.seen = []
    got = _bounds(net, rec, "numpy", "crown", monkeypatch, patches=True)
    n0 = int(np.prod(net.input_shape))
    assert _Recording.seen and all(len(s) == 3 and s[2] == n0 for s in _Recording.seen)
    want = _bounds(net, box, "numpy", "crown", monkeypatch, patches=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12 * (1 + np.abs(w).max()))
