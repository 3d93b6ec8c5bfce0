"""The attack: IR input gradients vs finite differences, objectives, confirmation, PGD."""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nets
from conftest import BENCH, needs_bench
from onnxverify.verify.attack import (CaseObjective, Confirmer, forward_flat, input_gradient, pgd_attack, sample_attack,
                               snap_to_box, value_and_grad)
from onnxverify.ir import Graph, Node
from onnxverify.ops import evaluate
from onnxverify.network import Network
from onnxverify.onnx.importer import import_model
from onnxverify.onnx.reference import OrtModel
from onnxverify.specs.vnnlib import Case, Property


def _fd_check(graph, x, c, h=1e-6, max_dims=48, seed=0):
    """Relative error between the IR gradient of sum(c * f(x)) and central differences
    (float64), on up to ``max_dims`` random input coordinates, all in one batched forward."""
    B, n = x.shape
    dims = np.sort(np.random.default_rng(seed).permutation(n)[:max_dims])
    _, g = value_and_grad(graph, x, lambda y: c)
    E = np.zeros((len(dims), n))
    E[np.arange(len(dims)), dims] = h
    pts = np.concatenate([(x[:, None] + E[None]), (x[:, None] - E[None])]).reshape(-1, n)  # (2 B d, n)
    out = np.asarray(evaluate(graph, pts.reshape((len(pts),) + tuple(graph.input_shape)))).reshape(2, B, len(dims), -1)
    f = (out * c[None, :, None, :]).sum(-1)
    fd = (f[0] - f[1]) / (2 * h)
    return np.abs(fd - g[:, dims]).max() / (np.abs(fd).max() + 1e-12)


@pytest.mark.parametrize("name", sorted(nets.ALL_BUILDERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_matches_finite_differences(name, seed):
    model, (lo, hi) = nets.ALL_BUILDERS[name](seed)
    net = Network(import_model(model), None, model)
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, (3, net.n_inputs))
    c = rng.normal(size=(3, net.n_outputs))
    assert _fd_check(net.graph, x, c) < 1e-4


def _paramramp_graph(rng, eta=0.2):
    W1, b1 = rng.normal(size=(6, 4)), rng.normal(size=6) * 0.3
    W2, b2 = rng.normal(size=(3, 6)), rng.normal(size=3) * 0.3
    r = np.abs(rng.normal(size=6)) + 0.2
    r[0] = -1.0  # clamped to 1e-4
    nodes = [Node("x", "Input", shape=(4,)),
             Node("h", "Linear", ("x",), {"weight": W1, "bias": b1}, shape=(6,)),
             Node("a", "ParamRamp", ("h",), {"r": r}, {"eta": eta}, shape=(6,)),
             Node("y", "Linear", ("a",), {"weight": W2, "bias": b2}, shape=(3,))]
    return Graph(nodes, "y")


def test_paramramp_gradient():
    rng = np.random.default_rng(0)
    g = _paramramp_graph(rng)
    x = rng.normal(size=(5, 4))
    c = rng.normal(size=(5, 3))
    assert _fd_check(g, x, c) < 1e-4


def test_gradient_of_unused_input_is_zero():
    g = Graph([Node("x", "Input", shape=(2,)), Node("y", "Affine", ("x",), {"scale": np.zeros(2), "shift": np.ones(2)},
                                                  shape=(2,))], "y")
    env = evaluate(g, np.ones((1, 2), np.float32), keep_all=True)
    assert np.all(input_gradient(g, env, np.ones((1, 2), np.float32)) == 0)


def test_objective_margins_and_gradient():
    # disjunct 0: y0 - y1 <= 0 and y2 <= 1; disjunct 1: -y0 <= -5
    d0 = (np.array([[1.0, -1, 0], [0, 0, 1]]), np.array([0.0, 1.0]))
    d1 = (np.array([[-1.0, 0, 0]]), np.array([-5.0]))
    obj = CaseObjective([d0, d1], 3)
    y = np.array([[0.0, 1.0, 3.0], [6.0, 0.0, 0.0]])
    m = obj.margins(y)
    np.testing.assert_allclose(m, [[2.0, 5.0], [6.0, -1.0]])
    loss, g = obj.loss_grad(y, np.array([-1, 0]))
    np.testing.assert_allclose(loss, [2.0, 6.0])
    np.testing.assert_allclose(g, [[0, 0, 1], [1, -1, 0]])


def test_summed_and_softmax_gradients_pull_several_rows_of_the_target():
    d0 = (np.array([[1.0, -1, 0], [0, 0, 1]]), np.array([0.0, 1.0]))
    d1 = (np.array([[-1.0, 0, 0]]), np.array([-5.0]))
    obj = CaseObjective([d0, d1], 3)
    y = np.array([[2.0, 1.0, 3.0], [2.0, 1.0, 0.5], [2.0, 1.0, 3.0], [2.0, 1.0, 3.0]])  # d0 rows: (1, 2), (1, -0.5), (1, 2)
    loss, g = obj.loss_grad(y, np.array([0, 0, 0, 0]), np.array([1, 1, 0, 2]))
    np.testing.assert_allclose(loss, [2.0, 1.0, 2.0, 2.0])  # the loss is the margin whatever the gradient
    np.testing.assert_allclose(g[:3], [[1, -1, 1], [1, -1, 0], [0, 0, 1]])  # sum of positive rows / worst row
    p = np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()  # soft maximum of d0's rows (1, 2); d1's row is not mine
    np.testing.assert_allclose(g[3], p[0] * np.array([1, -1, 0]) + p[1] * np.array([0, 0, 1]), rtol=1e-6)


@needs_bench
def test_pgd_finds_a_targeted_counterexample_the_margin_gradient_missed():
    """marabou_cifar10 cifar10_large, index 6413, target 7 (sat; alpha-beta-CROWN 6.8 s):
    nine rows ``Y_7 >= Y_j``. PGD on the margin alone came within 0.03 of it after 1,000
    steps and missed it in the cascade; the summed gradient reaches it in a few hundred."""
    from onnxverify.verify.loading import load_problem

    root = BENCH / "marabou_cifar10"
    net, ort, prop, _ = load_problem(root / "onnx/cifar10_large.onnx",
                                     root / "vnnlib/networkcifar10_large_index6413_eps0.012_target7_orig6.vnnlib")
    case = prop.cases[0]
    obj = CaseObjective(case.y_disjuncts, net.n_outputs)
    confirm = Confirmer(ort, prop, net.input_shape)
    assert pgd_attack(net.graph, case, obj, confirm, np.random.default_rng(0), 4, 100, time.monotonic() + 60)
    x, y = confirm.found
    assert np.all(x >= case.x_lower) and np.all(x <= case.x_upper) and np.all(y[7] >= np.delete(y, 7))


def test_snap_to_box_gives_float32_values_inside():
    lo = np.array([0.1, 1 / 3, -0.7, 0.5])
    hi = np.array([0.1000001, 0.3333334, -0.6999999, 0.5])
    x = snap_to_box(np.array([0.09, 0.5, -0.7, 0.5]), lo, hi)
    assert np.all(x.astype(np.float32).astype(np.float64) == x)
    assert np.all(x >= lo) and np.all(x <= hi)


def _mlp_file(tmp_path, W1, b1, W2, b2, name="m.onnx"):
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", np.shape(W1)[1]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", np.shape(W2)[0]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path / name
    onnx.save(m, path)
    return path


def test_pgd_finds_a_narrow_counterexample_that_sampling_misses(tmp_path):
    # y = sum relu(x) - 9.5 on [0, 1]^10: y >= 0.3 only in a tiny corner
    path = _mlp_file(tmp_path, np.eye(10), np.zeros(10), np.ones((1, 10)), [-9.5])
    net = Network(import_model(onnx.load(path)), str(path))
    case = Case(np.zeros(10), np.ones(10), [(np.array([[-1.0]]), np.array([-0.3]))])  # unsafe: y >= 0.3
    prop = Property(10, 1, [case])
    obj = CaseObjective(case.y_disjuncts, 1)
    rng = np.random.default_rng(0)
    confirm = Confirmer(OrtModel(path), prop, net.input_shape)
    found, best = sample_attack(lambda x: forward_flat(net.graph, x), case, obj, confirm, rng, 64,
                                time.monotonic() + 10)
    assert best.shape[1] == 10
    assert not found  # 32 random corners are unlikely to be all-ones
    assert pgd_attack(net.graph, case, obj, confirm, rng, 4, 30, time.monotonic() + 10, starts=best)
    x, y = confirm.found
    assert np.all(x >= 0) and np.all(x <= 1) and y[0] >= 0.3


def test_confirmer_rejects_what_onnxruntime_does_not_confirm(tmp_path):
    path = _mlp_file(tmp_path, np.ones((1, 2)), [0.0], [[1.0]], [0.0])
    case = Case(np.zeros(2), np.ones(2), [(np.array([[-1.0]]), np.array([-5.0]))])  # y >= 5: impossible
    confirm = Confirmer(OrtModel(path), Property(2, 1, [case]), (2,))
    assert not confirm(np.array([[1.0, 1.0], [0.5, 0.5]]), case)
    assert confirm.found is None and confirm.n_rejected == 2
