"""IBP soundness by sampling: every onnxruntime output of points inside the input set
(corners included) lies inside the bounds, on random and benchmark networks, for boxes
and l_1/l_2 balls, with and without a spec, on the numpy and torch backends."""
import numpy as np
import pytest
from conftest import BACKENDS, benchmark_networks, needs_bench

import nets
import onnxverify as ov
from onnxverify.onnx.reference import OrtModel

SLACK = 1e-5


def assert_inside(values, lower, upper):
    tol = SLACK * (1 + np.maximum(np.abs(lower), np.abs(upper)))
    assert (values >= lower - tol).all(), f"min violation {np.min(values - lower)}"
    assert (values <= upper + tol).all(), f"max violation {np.max(values - upper)}"


def _net(model):
    return ov.Network(ov.import_model(model), model=model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(nets.ALL_BUILDERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_ibp_box_sound_random_networks(name, seed, backend):
    rng = np.random.default_rng(seed)
    model, (lo, hi) = nets.ALL_BUILDERS[name](seed)
    net, ort = _net(model), OrtModel(model)
    x0 = rng.uniform(lo, hi, net.input_shape)
    eps = [0.0, 0.02, 0.3][seed + 1 if name.startswith("mlp") else seed]
    b = net.bounds(ov.LinfBall(x0, eps, clip=(lo, hi)), method="ibp", backend=backend)
    lower, upper = (np.asarray(ov.get_backend(backend).to_numpy(v), dtype=np.float64) for v in (b.lower, b.upper))
    box = ov.LinfBall(x0, eps, clip=(lo, hi))
    pts = nets.sample_box(rng, box.lower, box.upper, 2000).astype(np.float32)
    y = ort(pts).reshape(len(pts), -1)
    assert_inside(y, lower.reshape(1, -1), upper.reshape(1, -1))
    assert (lower <= upper).all()


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("name", ["mlp_relu", "convnet", "resnet"])
def test_ibp_lp_ball_sound_and_tighter_than_box(name, p):
    rng = np.random.default_rng(7)
    model, (lo, hi) = nets.ALL_BUILDERS[name](1)
    net, ort = _net(model), OrtModel(model)
    x0 = rng.uniform(lo, hi, net.input_shape)
    eps = 0.5
    b = net.bounds(ov.LpBall(x0, eps, p))
    pts = nets.sample_lp_ball(rng, x0, eps, p, 3000).astype(np.float32)
    assert_inside(ort(pts).reshape(len(pts), -1), b.lower.reshape(1, -1), b.upper.reshape(1, -1))
    boxed = net.bounds(ov.Box(x0 - eps, x0 + eps))
    assert (b.upper - b.lower <= boxed.upper - boxed.lower + 1e-6).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["mlp_relu", "convnet", "nhwc_shape_chain"])
def test_ibp_with_margin_spec_sound_and_tighter(name, backend):
    rng = np.random.default_rng(3)
    model, (lo, hi) = nets.ALL_BUILDERS[name](2)
    net, ort = _net(model), OrtModel(model)
    x0 = rng.uniform(lo, hi, (3,) + net.input_shape)
    labels = net.forward(x0).argmax(1)
    C = ov.margin_spec(labels, net.n_outputs)
    iset = ov.LinfBall(x0, 0.05, clip=(lo, hi))
    b = net.bounds(iset, spec=C, backend=backend)
    lower, upper = (ov.get_backend(backend).to_numpy(v) for v in (b.lower, b.upper))
    assert lower.shape == (3, net.n_outputs - 1)
    plain = net.bounds(iset)
    naive_lo, _ = ov.specs.apply_spec_to_interval(ov.get_backend("numpy"), C, plain.lower, plain.upper)
    assert (lower >= naive_lo - 1e-5).all()  # folding C is never looser
    for i in range(3):
        pts = nets.sample_box(rng, iset.lower[i], iset.upper[i], 1000).astype(np.float32)
        margins = np.einsum("kn,bn->bk", C[i], ort(pts).reshape(len(pts), -1))
        assert_inside(margins, lower[i][None], upper[i][None])


def test_eps_zero_gives_forward_output():
    model, _ = nets.resnet(0)
    net = _net(model)
    x0 = np.random.default_rng(0).uniform(-1, 1, net.input_shape)
    b = net.bounds(ov.LinfBall(x0, 0.0))
    np.testing.assert_allclose(b.lower, net.forward(x0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.upper, net.forward(x0), rtol=1e-5, atol=1e-5)


@needs_bench
@pytest.mark.parametrize("path", [p for p in benchmark_networks() if "acasxu" not in p.name or p.name.endswith("1_1_batch_2000.onnx")],
                         ids=lambda p: p.name)
def test_ibp_sound_on_benchmark_networks(path):
    rng = np.random.default_rng(11)
    net, ort = ov.load(path), OrtModel(path)
    x0 = rng.uniform(0, 1, net.input_shape)
    eps = 0.002
    b = net.bounds(ov.LinfBall(x0, eps))
    pts = nets.sample_box(rng, x0 - eps, x0 + eps, 500).astype(np.float32)
    assert_inside(ort(pts).reshape(len(pts), -1), b.lower.reshape(1, -1), b.upper.reshape(1, -1))
