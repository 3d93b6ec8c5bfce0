"""alpha-CROWN: optimisable lines of the rules are sound for every parameter, start at the
strategy's lines, and the optimised bounds are sound and never looser than CROWN's."""
from __future__ import annotations

import numpy as np
import pytest

import ir_nets
import nets
import onnxverify as ov
from conftest import torch_available
from onnxverify.backend import get_backend
from onnxverify.ir import Node
from onnxverify.ops import evaluate, rule_of

NP = get_backend("numpy")
pytestmark = pytest.mark.usefixtures("one_blas_thread")
needs_torch = pytest.mark.skipif(not torch_available(), reason="alpha-CROWN needs torch")


def _rule_nodes(n, rng):
    return [Node("a", "Relu", ("x",), shape=(n,)), Node("b", "LeakyRelu", ("x",), attrs={"alpha": 0.1}, shape=(n,)),
            Node("c", "ParamRamp", ("x",), params={"r": rng.uniform(1e-4, 2, n).astype(np.float32)},
                 attrs={"eta": 0.05}, shape=(n,)),
            Node("d", "ParamRamp", ("x",), params={"r": rng.uniform(0.01, 2, n).astype(np.float32)},
                 attrs={"eta": 0.0}, shape=(n,)),
            Node("e", "Sigmoid", ("x",), shape=(n,)), Node("f", "Tanh", ("x",), shape=(n,))]


def _intervals(rng, n):
    """Centres around the kinks, widths from 0 (equal bounds) to huge."""
    c = rng.normal(0, 2, n)
    w = np.abs(rng.normal(0, 2, n)) * rng.choice([0, 1e-7, 1e-3, 1, 30], n)
    return (c - w)[None], (c + w)[None]


@pytest.mark.parametrize("which", range(6))
def test_alpha_lines_bound_f_for_every_parameter(which):
    rng = np.random.default_rng(which)
    n, K = 3000, 3
    node = _rule_nodes(n, rng)[which]
    rule = rule_of(node)
    l, u = _intervals(rng, n)
    alphas = tuple(np.where(rng.uniform(size=(1, K, n)) < 0.3, rng.integers(0, 2, (1, K, n)),
                            rng.uniform(0, 1, (1, K, n))) for _ in range(rule.alpha_count))
    aL, bL, aU, bU = (np.broadcast_to(v, (1, K, n)) for v in rule.alpha_lines(NP, node, l, u, alphas))
    z = l + np.linspace(0, 1, 129)[:, None] * (u - l)  # (129, n) dense grid incl. both ends
    fz = rule.forward(NP, node, z)
    for k in range(K):
        tol = 1e-9 * (1 + np.abs(fz))
        assert np.all(aL[0, k] * z + bL[0, k] <= fz + tol), node.op
        assert np.all(aU[0, k] * z + bU[0, k] >= fz - tol), node.op


@pytest.mark.parametrize("which", range(6))
def test_alpha_lines_kept_per_bounds_equal_fresh_ones(which):
    """What a rule keeps in the pass's cache between iterates on the same bounds
    (:func:`per_bounds`) gives the lines a fresh computation gives, for new parameters and,
    after the bounds change (new arrays), for the new bounds."""
    rng = np.random.default_rng(20 + which)
    n, K = 400, 2
    node = _rule_nodes(n, rng)[which]
    rule = rule_of(node)
    cache = {}

    def params():
        return tuple(rng.uniform(0, 1, (1, K, n)) for _ in range(rule.alpha_count))

    l, u = _intervals(rng, n)
    rule.alpha_lines(NP, node, l, u, params(), cache)  # fills the cache for (l, u)
    assert cache
    for bounds in ((l, u), _intervals(rng, n)):
        a = params()
        for g, ref in zip(rule.alpha_lines(NP, node, *bounds, a, cache), rule.alpha_lines(NP, node, *bounds, a)):
            np.testing.assert_array_equal(np.broadcast_to(g, (1, K, n)), np.broadcast_to(ref, (1, K, n)))


@pytest.mark.parametrize("strategy", ["adaptive", "tight"])
@pytest.mark.parametrize("which", range(6))
def test_alpha_init_reproduces_the_strategy_lines(which, strategy):
    rng = np.random.default_rng(10 + which)
    node = _rule_nodes(500, rng)[which]
    rule = rule_of(node)
    l, u = _intervals(rng, 500)
    init = rule.alpha_init(NP, node, l, u, strategy)
    assert all(np.all((a >= 0) & (a <= 1)) for a in init)
    got = rule.alpha_lines(NP, node, l, u, tuple(a[:, None] for a in init))
    for g, ref in zip(got, rule.lines(NP, node, l, u, strategy)):
        np.testing.assert_allclose(np.broadcast_to(g, (1, 1, 500))[:, 0], ref, atol=1e-9)


NETS = [("relu", ("Relu", "Relu")), ("leaky", ("LeakyRelu", "Relu")), ("paramramp", ("ParamRamp", "ParamRamp")),
        ("sigmoid", ("Sigmoid", "Tanh")), ("mixed", ("ParamRamp", "LeakyRelu"))]


@needs_torch
@pytest.mark.parametrize("strategy", ["adaptive", "tight"])
@pytest.mark.parametrize("name,acts", NETS)
def test_alpha_crown_sound_and_never_looser_than_crown(name, acts, strategy):
    from onnxverify.bounds.optimized import alpha_crown

    rng = np.random.default_rng(hash(name) % 1000)
    g = ir_nets.dense_net(3, sizes=(4, 10, 10, 3), acts=acts, eta=0.1, scale=1.5)
    net = ov.Network(g)
    x0 = rng.uniform(-1, 1, (2, 4))
    box = ov.Box(x0 - 0.5, x0 + 0.5)
    C = rng.normal(size=(4, 3))
    crown = net.bounds(box, method="crown", spec=C, strategy=strategy, dtype=np.float64, intersect_ibp=False)
    res = alpha_crown(g, box, C, strategy=strategy, iters=15)
    assert np.all(res.lower >= crown.lower - 1e-9) and np.all(res.upper <= crown.upper + 1e-9)
    np.testing.assert_allclose(res.init_lower, crown.lower, rtol=1e-9, atol=1e-9)  # iteration 0 is CROWN
    assert (res.lower - crown.lower).sum() + (crown.upper - res.upper).sum() > 1e-3  # it optimises something
    for b in range(2):
        xs = ir_nets.box_points(rng, box.lower[b], box.upper[b], 3000)
        ys = ir_nets.outputs(g, xs) @ C.T
        assert np.all(ys >= res.lower[b] - 1e-9) and np.all(ys <= res.upper[b] + 1e-9)
        for name_, (lo, hi) in res.bounds.items():  # intermediate bounds are sound too
            v = ir_nets.values(g, xs)[name_].reshape(len(xs), -1)
            assert np.all(v >= lo[b].ravel() - 1e-9) and np.all(v <= hi[b].ravel() + 1e-9)


@needs_torch
@pytest.mark.parametrize("builder", ["convnet", "resnet"])
def test_alpha_crown_method_on_conv_nets(builder):
    """``method="alpha-crown"`` on conv / residual graphs (MaxPool, AvgPool, BN, Concat keep their
    fixed lines): sound by sampling, never looser than CROWN."""
    model, (lo, hi) = nets.ALL_BUILDERS[builder](1)
    net = ov.Network(ov.import_model(model), model=model)
    rng = np.random.default_rng(5)
    x0 = rng.uniform(lo, hi, (1,) + net.input_shape)
    box = ov.Box(np.clip(x0 - 0.1, lo, hi), np.clip(x0 + 0.1, lo, hi))
    C = ov.margin_spec(0, net.n_outputs)
    crown = net.bounds(box, method="crown", spec=C, dtype=np.float64)
    alpha = net.bounds(box, method="alpha-crown", spec=C, dtype=np.float64)
    assert np.all(alpha.lower >= crown.lower - 1e-9) and np.all(alpha.upper <= crown.upper + 1e-9)
    xs = nets.sample_box(rng, box.lower[0], box.upper[0], 500)
    ys = np.stack([evaluate(net.graph, x[None].astype(np.float64))[0] for x in xs]) @ np.reshape(C, (-1, net.n_outputs)).T
    assert np.all(ys >= alpha.lower - 1e-7) and np.all(ys <= alpha.upper + 1e-7)


def test_alpha_crown_is_a_method_name():
    assert "alpha-crown" in ov.METHODS
    from onnxverify.bounds import parse_method

    assert parse_method("alpha-crown").linear and not parse_method("alpha-crown").uses_forward_maps


def test_alpha_crown_without_torch_says_so(monkeypatch):
    import onnxverify.bounds.optimized as opt
    from onnxverify.errors import BackendError

    def missing(device=None):
        raise BackendError("optimised bounds (alpha-CROWN, beta-CROWN) need torch for their gradients: no torch")

    monkeypatch.setattr(opt, "torch_backend", missing)
    g = ir_nets.dense_net(0)
    with pytest.raises(BackendError, match="need torch"):
        ov.Network(g).bounds(ov.Box(-np.ones(3), np.ones(3)), method="alpha-crown")
