"""The backward pass's hooks for optimised relaxations: per-row bounding lines (one slope per
bounded row and neuron, as alpha-CROWN needs) and extra coefficients at inner nodes (the
Lagrangian terms of split constraints, as beta-CROWN needs)."""
from __future__ import annotations

import numpy as np
import pytest

import nets
import onnxverify as ov
from onnxverify.backend import get_backend
from onnxverify.bounds.backward import backward
from onnxverify.bounds.ibp import interval_bounds
from onnxverify.bounds.methods import intermediate_bounds
from onnxverify.ops import evaluate, rule_of

NP = get_backend("numpy")


def _setup(seed=0, eps=0.2):
    model, (lo, hi) = nets.mlp(seed)
    net = ov.Network(ov.import_model(model), model=model)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(lo, hi, (2,) + net.input_shape)
    box = ov.Box(x0 - eps, x0 + eps).batched(net.input_shape)
    env = interval_bounds(NP, net.graph, box, np.float64)
    eng = intermediate_bounds(net.graph, box, "crown-ibp", "adaptive", NP, np.float64, env)
    out = net.graph[net.graph.output]
    lam = rng.normal(size=(2, 3) + tuple(out.shape))
    return net, box, eng, lam, rng


def _samples(rng, box, n=2000):
    u = rng.uniform(size=(n,) + box.lower.shape)
    u[: n // 4] = rng.integers(0, 2, size=(n // 4,) + box.lower.shape)
    return box.lower + u * (box.upper - box.lower)


def _activations(net):
    return [n for n in net.graph.computed if rule_of(n).elementwise and not rule_of(n).affine]


def test_per_row_lines_equal_shared_lines():
    net, box, eng, lam, _ = _setup()
    shared = backward(eng, net.graph.output, lam)
    K = lam.shape[1]
    per_row = {n.name: tuple(np.repeat(v[:, None], K, axis=1) for v in eng.relaxation(n.name)) for n in _activations(net)}
    rows = backward(eng, net.graph.output, lam, relax=per_row)
    np.testing.assert_allclose(rows[0], shared[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rows[1], shared[1], rtol=1e-12, atol=1e-12)


def test_per_row_free_lower_slopes_stay_sound():
    """Any lower slope in [0, 1] is a valid lower line of an unstable ReLU: random slopes per
    row and neuron give sound bounds."""
    net, box, eng, lam, rng = _setup(1)
    K = lam.shape[1]
    relax = {}
    for n in _activations(net):
        aL, bL, aU, bU = (np.repeat(v[:, None], K, axis=1) for v in eng.relaxation(n.name))
        lo, hi = eng.best(n.inputs[0])
        unstable = np.repeat(((lo < 0) & (hi > 0))[:, None], K, axis=1)
        aL = np.where(unstable, rng.uniform(0, 1, aL.shape), aL)
        relax[n.name] = (aL, bL, aU, bU)
    lower, upper = backward(eng, net.graph.output, lam, relax=relax)
    xs = _samples(rng, box)
    ys = np.stack([evaluate(net.graph, x) for x in xs]).reshape(len(xs), 2, -1)
    vals = np.einsum("nbo,bko->nbk", ys, lam.reshape(2, K, -1))
    assert np.all(vals >= lower - 1e-9) and np.all(vals <= upper + 1e-9)


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_extra_coefficients_bound_the_combined_function(scale):
    net, box, eng, lam, rng = _setup(2)
    hidden = next(n.inputs[0] for n in _activations(net))
    K = lam.shape[1]
    c = scale * rng.normal(size=(2, K) + tuple(net.graph[hidden].shape))
    lower, upper = backward(eng, net.graph.output, lam, extra={hidden: (c, c)})
    if scale == 0:
        base = backward(eng, net.graph.output, lam)
        np.testing.assert_allclose(lower, base[0], atol=1e-12)
        np.testing.assert_allclose(upper, base[1], atol=1e-12)
    xs = _samples(rng, box)
    envs = [evaluate(net.graph, x, keep_all=True) for x in xs]
    ys = np.stack([e[net.graph.output] for e in envs]).reshape(len(xs), 2, -1)
    hs = np.stack([e[hidden] for e in envs]).reshape(len(xs), 2, -1)
    vals = np.einsum("nbo,bko->nbk", ys, lam.reshape(2, K, -1)) + np.einsum("nbh,bkh->nbk", hs, c.reshape(2, K, -1))
    assert np.all(vals >= lower - 1e-9) and np.all(vals <= upper + 1e-9)
    assert np.all(vals.min(axis=0) - lower < 10 * (1 + np.abs(lower)))  # not vacuous


def test_extra_at_a_node_the_start_does_not_depend_on_is_refused():
    net, box, eng, lam, _ = _setup(3)
    first = next(n.inputs[0] for n in _activations(net))
    with pytest.raises(ValueError, match="does not depend on"):
        backward(eng, first, np.ones((2, 1) + tuple(net.graph[first].shape)),
                 extra={net.graph.output: (None, None)})
