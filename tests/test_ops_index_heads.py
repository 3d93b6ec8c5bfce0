"""Index heads after the logits, end to end: ArgMax -> OneHot and TopK (values and indices as
two graph outputs). Forward equals onnxruntime; every method x strategy is sound by sampling
(uniform points, corners, PGD points; onnxruntime as the reference); TopK positions whose index is decided get exact lines (the
values' bounds equal the logits' own); ``bounds`` says in one line that the output is an index
and names the nodes; ``verify`` decides a property on the one-hot code, with a counterexample
that replays in onnxruntime."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import nets
import onnxverify as ov
from onnxverify.onnx.reference import OrtModel
from test_ops_nonlinear import sampled

METHODS = ["ibp", "lbp", "crown-ibp", "crown-lbp", "crown", "relaxed-crown-2"]
STRATEGIES = ["constant", "tight", "adaptive"]


def onehot_head(seed=0):
    """``nets.mlp`` (5 logits) -> ArgMax (int64) -> OneHot(depth 5, values [-1, 2])."""
    model, rng = nets.mlp(seed)
    out = model.graph.output[0].name
    model.graph.initializer.extend([numpy_helper.from_array(np.array(5, np.int64), "depth"),
                                    numpy_helper.from_array(np.array([-1.0, 2.0], np.float32), "onoff")])
    model.graph.node.extend([helper.make_node("ArgMax", [out], ["label"], name="argmax", axis=1, keepdims=0),
                             helper.make_node("OneHot", ["label", "depth", "onoff"], ["code"], name="onehot")])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("code", TensorProto.FLOAT, ["N", 5]))
    onnx.checker.check_model(model)
    return model, rng


def topk_head(seed=0, k=3):
    """``nets.mlp`` -> TopK(k) with both outputs: values Y_0..Y_{k-1}, indices Y_k..Y_{2k-1}."""
    model, rng = nets.mlp(seed)
    out = model.graph.output[0].name
    model.graph.initializer.append(numpy_helper.from_array(np.array([k], np.int64), "k"))
    model.graph.node.append(helper.make_node("TopK", [out, "k"], ["values", "indices"], name="topk", axis=1))
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N", k]),
                               helper.make_tensor_value_info("indices", TensorProto.INT64, ["N", k])])
    onnx.checker.check_model(model)
    return model, rng


HEADS = {"onehot": onehot_head, "topk": topk_head, "top1": lambda seed=0: topk_head(seed, 1)}


def _ort_flat(ort, x):
    return np.asarray(ort(x.astype(np.float32)), np.float64).reshape(len(x), -1)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_forward_equals_onnxruntime(name):
    model, (lo, hi) = HEADS[name](0)
    net, ort = ov.Network(ov.import_model(model), model=model), OrtModel(model)
    x = np.random.default_rng(1).uniform(lo, hi, (32,) + net.input_shape).astype(np.float32)
    assert np.allclose(net.forward(x).reshape(32, -1), _ort_flat(ort, x), rtol=1e-5, atol=1e-5)  # indices: exact
    assert net.check().ok


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_method_and_strategy_is_sound(name):
    model, (lo, hi) = HEADS[name](0)
    net, ort = ov.Network(ov.import_model(model), model=model), OrtModel(model)
    rng = np.random.default_rng(2)
    x0 = rng.uniform(lo, hi, (2,) + net.input_shape)
    for eps in (0.01, 0.08):
        box = ov.Box(np.clip(x0 - eps, lo, hi), np.clip(x0 + eps, lo, hi))
        ys = sampled(net, ort, box, rng, n=200)  # uniform points, corners, PGD points: (n, 2, n_out)
        for method in METHODS:
            for strategy in STRATEGIES if method != "ibp" else [None]:
                b = net.bounds(box, method=method, strategy=strategy, dtype=np.float64)
                low, high = b.lower.reshape(1, 2, -1), b.upper.reshape(1, 2, -1)
                assert (ys >= low - 1e-6).all() and (ys <= high + 1e-6).all(), (method, strategy, eps)


def test_decided_topk_positions_get_exact_lines():
    """Where the order of the top 3 is certain on the box, CROWN's bounds on the gaps
    ``v_0 - v_1`` and ``v_1 - v_2`` are its bounds on the gaps of the logits at those indices
    (the lines are ``v_r = x_i``; constant lines would lose the correlation), and the index
    bounds are those indices."""
    model, (lo, hi) = topk_head(0)
    net = ov.Network(ov.import_model(model), model=model)
    logits = ov.Network(ov.import_model(nets.mlp(0)[0]))
    gaps = np.zeros((2, 6))
    gaps[[0, 1], [0, 1]], gaps[[0, 1], [1, 2]] = 1.0, -1.0
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(40):
        x0 = rng.uniform(lo, hi, (1,) + net.input_shape).astype(np.float32)
        iset = ov.LinfBall(x0, 0.01, clip=(lo, hi))
        b = net.bounds(iset, method="crown", dtype=np.float64)
        idx_lo, idx_hi = b.lower[0, 3:], b.upper[0, 3:]
        if not np.array_equal(idx_lo, idx_hi):
            continue
        found += 1
        order = idx_lo.astype(int)
        assert np.array_equal(order, np.argsort(-logits.forward(x0)[0], kind="stable")[:3])
        ref_spec = np.zeros((2, 5))
        ref_spec[[0, 1], order[:2]], ref_spec[[0, 1], order[1:]] = 1.0, -1.0
        ours = net.bounds(iset, method="crown", spec=gaps, dtype=np.float64, intersect_ibp=False)
        ref = logits.bounds(iset, method="crown", spec=ref_spec, dtype=np.float64, intersect_ibp=False)
        assert np.allclose(ours.lower, ref.lower, atol=1e-9) and np.allclose(ours.upper, ref.upper, atol=1e-9)
    assert found >= 5


def test_ties_follow_onnxruntime():
    """Equal logits: the lower index comes first, for largest and smallest, as in onnxruntime."""
    for largest in (1, 0):
        node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=largest)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                                  [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 4]),
                                   helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 4])],
                                  [numpy_helper.from_array(np.array([4], np.int64), "k")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        net, ort = ov.Network(ov.import_model(model), model=model), OrtModel(model)
        x = np.array([[1, 3, 3, 0, 1, 3], [2, 2, 2, 2, 2, 2]], np.float32)
        assert np.array_equal(net.forward(x).reshape(2, -1), _ort_flat(ort, x))


def test_bounds_cli_names_the_index_nodes(tmp_path):
    from onnxverify.cli import main

    for name, expect in (("onehot", "node onehot (OneHot) of node argmax (ArgMax)"),
                         ("topk", "outputs Y_3..Y_5 are indices (node topk, TopKIndices)")):
        model, _ = HEADS[name](0)
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        np.save(tmp_path / "x.npy", np.full((1, 4, 4), 0.5, np.float32))
        res = CliRunner().invoke(main, ["bounds", str(path), "--input", str(tmp_path / "x.npy"), "--eps", "0.01",
                                        "--clip", "0", "1"])
        assert res.exit_code == 0, res.output
        assert expect in res.output
        if name == "onehot":  # the logits are bounded: five outputs y0..y4
            assert "y4" in res.output and "y5" not in res.output


def _property(tmp_path, x0, eps, cls, threshold):
    lines = [f"(declare-const X_{i} Real)" for i in range(x0.size)] + [f"(declare-const Y_{j} Real)" for j in range(5)]
    for i, v in enumerate(x0.reshape(-1)):
        lines += [f"(assert (>= X_{i} {max(v - eps, 0.0):.9f}))", f"(assert (<= X_{i} {min(v + eps, 1.0):.9f}))"]
    lines += [f"(assert (<= Y_{cls} {threshold}))"]  # the unsafe set: class cls is off
    path = tmp_path / f"p_{eps}.vnnlib"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_verify_decides_a_property_on_the_one_hot_code(tmp_path):
    from onnxverify.verify import verify
    from onnxverify.vnncomp import replay_counterexample

    model, (lo, hi) = onehot_head(0)
    path = tmp_path / "onehot.onnx"
    onnx.save(model, path)
    net = ov.load(path)
    rng = np.random.default_rng(4)
    for _ in range(50):  # a centre whose class is decided at eps 0.002 by CROWN
        x0 = rng.uniform(lo, hi, net.input_shape).astype(np.float32)
        b = net.bounds(ov.LinfBall(x0[None], 0.002, clip=(lo, hi)), method="crown")
        if np.sum(b.lower[0] > 0) == 1:
            break
    cls = int(np.argmax(b.lower[0]))
    res = verify(path, _property(tmp_path, x0, 0.002, cls, 0.5), timeout=60)
    assert res.verdict == "unsat", res.summary()
    prop = _property(tmp_path, x0, 1.0, cls, 0.5)  # the whole input box: some input has another class
    res = verify(path, prop, timeout=60)
    assert res.verdict == "sat", res.summary()
    ok, y = replay_counterexample(path, prop, res.counterexample[0])
    assert ok and y[cls] == -1.0
