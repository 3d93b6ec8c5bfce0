"""Nonlinear ops and products of computed tensors on whole networks (issue 10, items 1-3).

Soundness by sampling (uniform points, corners and PGD-like points, onnxruntime as the
reference) of every method x strategy on small random networks that use the new ops: a
transformer block (MatMul of computed tensors, Softmax, LayerNormalization in both the
opset-17 and the older decomposed form, residual), a Sin/Cos/Exp net with products of two
computed tensors, and chains of the other elementwise ops; Theorem-2 ordering with the
tight strategy. The per-op contracts are in tests/test_op_contracts.py; the builders are
shared with benchmarks/op_widths.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import onnxverify as ov
from onnxverify.backend import get_backend
from onnxverify.onnx.importer import import_model
from onnxverify.onnx.reference import OrtModel
from onnxverify.ops import REGISTRY
from onnxverify.verify.attack import value_and_grad

import nonlinear_nets as nn_
from conftest import torch_available

NP = get_backend("numpy")
LINEAR = ("lbp", "crown-ibp", "crown-lbp", "crown", "relaxed-crown-1")
STRATEGIES = ("constant", "tight", "adaptive")


def test_numpy_erf_error_is_below_the_margin_the_rules_add():
    x = np.linspace(-9.0, 9.0, 200001)
    ref = np.array([math.erf(v) for v in x])
    assert np.abs(NP.erf(x) - ref).max() < 8.4e-8  # Erf.value_abs_error is 2e-7


def pgd_points(graph, lower, upper, rng, steps=12, starts=2):
    """Signed-gradient ascent / descent on every output from random starts in the box:
    ``(n, *lower.shape)`` points (one batch element's box)."""
    n_out = int(np.prod(graph.output_shape))
    x = rng.uniform(lower, upper, (starts, 2 * n_out) + lower.shape)
    x = x.reshape((-1,) + lower.shape)
    k = np.tile(np.arange(2 * n_out), starts)
    sign = np.where(k % 2 == 0, 1.0, -1.0)
    target = k // 2
    step = (upper - lower) / 4
    for _ in range(steps):
        def cot(y):
            g = np.zeros_like(y)
            g[np.arange(len(y)), target] = sign
            return g

        _, gx = value_and_grad(graph, x.reshape(len(x), -1), cot)
        x = np.clip(x + step * np.sign(gx.reshape(x.shape)), lower, upper)
        step = step * 0.75
    return x


def sampled(net, ort, box, rng, n=160):
    """onnxruntime outputs at uniform points, corners and PGD points of each box: ``(n', B, n_out)``."""
    B = box.lower.shape[0]
    out = []
    for b in range(B):
        lo, hi = box.lower[b], box.upper[b]
        u = rng.uniform(size=(n,) + lo.shape)
        u[: n // 2] = rng.integers(0, 2, size=(n // 2,) + lo.shape)
        pts = np.concatenate([lo + u * (hi - lo), pgd_points(net.graph, lo, hi, rng)])
        out.append(ort(pts.astype(np.float32)).reshape(len(pts), -1))
    return np.stack(out, 1).astype(np.float64)


def inside(ys, b, slack=2e-5):
    lo, hi = np.asarray(b.lower).reshape(1, ys.shape[1], -1), np.asarray(b.upper).reshape(1, ys.shape[1], -1)
    tol = slack * (1 + np.abs(ys).max())
    assert np.all(ys >= lo - tol), float(np.max(lo - ys))
    assert np.all(ys <= hi + tol), float(np.max(ys - hi))


def _ordered(outer, inner, slack=1e-5):
    tol = slack * (1 + np.abs(outer.lower) + np.abs(outer.upper))
    assert (inner.lower >= outer.lower - tol).all(), np.max(outer.lower - inner.lower)
    assert (inner.upper <= outer.upper + tol).all(), np.max(inner.upper - outer.upper)


def _nets(*extra):
    return list(extra or sorted(nn_.BUILDERS))


def _case(name, seed=0):
    model, (lo, hi), eps = nn_.BUILDERS[name](seed)
    net, ort = ov.Network(import_model(model), model=model), OrtModel(model)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(lo + eps, hi - eps, (2,) + net.input_shape)
    return net, ort, ov.Box(x0 - eps, x0 + eps), rng


@pytest.mark.parametrize("name", _nets())
def test_every_method_and_strategy_is_sound(name):
    net, ort, box, rng = _case(name)
    x0 = (box.lower + box.upper) / 2
    np.testing.assert_allclose(net.forward(x0), ort(x0.astype(np.float32)), rtol=2e-5, atol=2e-5)
    ys = sampled(net, ort, box, rng)
    inside(ys, net.bounds(box, method="ibp", dtype=np.float64))
    for method in LINEAR:
        for strategy in STRATEGIES:
            inside(ys, net.bounds(box, method=method, strategy=strategy, dtype=np.float64, intersect_ibp=False))


@pytest.mark.parametrize("name", _nets())
def test_theorem2_ordering_with_the_tight_strategy(name):
    net, _, box, _ = _case(name, seed=1)
    b = {m: net.bounds(box, method=m, strategy="tight", intersect_ibp=False, dtype=np.float64)
         for m in ("ibp", "lbp", "crown-ibp", "crown-lbp", "crown")}
    _ordered(b["ibp"], b["lbp"])
    _ordered(b["ibp"], b["crown-ibp"])
    _ordered(b["crown-ibp"], b["crown-lbp"])
    _ordered(b["crown-lbp"], b["crown"])
    width = {m: float(np.mean(v.upper - v.lower)) for m, v in b.items()}
    assert width["crown"] < width["ibp"], width


def test_transformer_block_uses_products_softmax_and_layernorm():
    model = nn_.BUILDERS["transformer"](0)[0]
    ops = {n.op for n in import_model(model).nodes}
    assert {"MatMul", "Mul", "PairDiff", "Exp", "Reciprocal", "Center", "Broadcast"} <= ops, ops


def test_decomposed_softmax_is_looser_than_the_pairwise_form():
    """exp(x_i) / sum_j exp(x_j) needs a product of two computed tensors: its CROWN bounds
    are wider than those of 1 / sum_j exp(x_j - x_i) (benchmarks/op_widths.py gives numbers)."""
    widths = {}
    for form in ("pairwise", "decomposed"):
        model, (lo, hi), eps = nn_.softmax_net(0, form)
        net = ov.Network(import_model(model), model=model)
        x0 = np.random.default_rng(0).uniform(lo, hi, (2,) + net.input_shape)
        b = net.bounds(ov.Box(x0 - eps, x0 + eps), method="crown", dtype=np.float64)
        widths[form] = float(np.mean(b.upper - b.lower))
    assert widths["pairwise"] < widths["decomposed"], widths


@pytest.mark.skipif(not REGISTRY.knows("", "ReduceMean"), reason="ReduceMean is not registered yet")
def test_layernorm_pattern_with_reducemean_imports_and_is_sound():
    model, (lo, hi), eps = nn_.layernorm_pattern_net(0, reduce_mean=True)
    net, ort = ov.Network(import_model(model), model=model), OrtModel(model)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(lo, hi, (2,) + net.input_shape)
    box = ov.Box(x0 - eps, x0 + eps)
    ys = sampled(net, ort, box, rng)
    for method in ("ibp", "crown"):
        inside(ys, net.bounds(box, method=method, dtype=np.float64, intersect_ibp=False))


@pytest.mark.skipif(not torch_available(), reason="torch not installed")
@pytest.mark.parametrize("name", _nets("transformer", "trig", "chain_elu_gelu"))
def test_torch_backend_gives_the_numpy_bounds(name):
    """Same rules on torch (its erf is exact; ours is within 8.4e-8 plus the lines' margin)."""
    net, _, box, _ = _case(name)
    to_np = get_backend("torch").to_numpy
    for method in ("ibp", "lbp", "crown"):
        a = net.bounds(box, method=method, dtype=np.float64)
        b = net.bounds(box, method=method, dtype=np.float64, backend="torch")
        scale = 1e-6 * (1 + np.abs(np.asarray(a.upper)).max())
        np.testing.assert_allclose(np.asarray(to_np(b.lower)), np.asarray(a.lower), rtol=0, atol=scale)
        np.testing.assert_allclose(np.asarray(to_np(b.upper)), np.asarray(a.upper), rtol=0, atol=scale)
