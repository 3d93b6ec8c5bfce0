"""Graph.forward equals onnxruntime (rtol 1e-5, atol 1e-5, float32) on every benchmark
network and on random networks of every supported op, on the numpy and torch backends."""
import numpy as np
import pytest
from conftest import BACKENDS, benchmark_networks, needs_bench

import nets
import onnxverify as ov
from onnxverify.onnx.reference import OrtModel


def _compare(net, ort, x, backend):
    ours = np.asarray(ov.get_backend(backend).to_numpy(net.forward(x, backend=backend)), dtype=np.float64)
    ref = ort(x).reshape(ours.shape).astype(np.float64)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@needs_bench
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", benchmark_networks(), ids=lambda p: p.name)
def test_benchmark_network_matches_onnxruntime(path, backend):
    net = ov.load(path)
    ort = OrtModel(path)
    x = np.random.default_rng(0).uniform(-1, 1, (3,) + net.input_shape).astype(np.float32)
    _compare(net, ort, x, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(nets.ALL_BUILDERS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_network_matches_onnxruntime(name, seed, backend):
    model, (lo, hi) = nets.ALL_BUILDERS[name](seed)
    net = ov.Network(ov.import_model(model), model=model)
    x = np.random.default_rng(seed).uniform(lo - 0.5, hi + 0.5, (4,) + net.input_shape).astype(np.float32)
    _compare(net, OrtModel(model), x, backend)


def test_check_report_flags_ok():
    model, _ = nets.mlp(0)
    net = ov.Network(ov.import_model(model), model=model)
    assert net.check().ok


def test_fusion_keeps_the_function():
    """BatchNorm folded into Conv, Add folded into MatMul: same outputs as unfused."""
    from onnxverify.onnx.importer import import_model
    from onnxverify.ops import evaluate

    model, _ = nets.convnet(3)
    fused, plain = import_model(model), import_model(model, fuse=False)
    assert len(fused) < len(plain)
    x = np.random.default_rng(0).uniform(0, 1, (2,) + fused.input_shape).astype(np.float32)
    np.testing.assert_allclose(evaluate(fused, x), evaluate(plain, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [8, 9, 10, 11, 12, 13, 15, 17, 19, 21])
def test_opsets_8_to_21(opset):
    """One network written natively at each opset (Pad/Squeeze/Unsqueeze change signature
    at 11/13, BatchNormalization/Dropout attributes change too) imports and matches onnxruntime."""
    model = nets.opset_net(opset)
    net = ov.Network(ov.import_model(model), model=model)
    x = np.random.default_rng(0).uniform(0, 1, (2,) + net.input_shape).astype(np.float32)
    _compare(net, OrtModel(model), x, "numpy")
