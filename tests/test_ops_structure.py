"""Structure ops and model shapes end to end: soundness by sampling of every method x
strategy on a slicing/gather/reduce net, a ConvTranspose generator, a model without a batch
axis, a two-input and a two-output model (onnxruntime as the reference); Theorem-2 ordering
with the tight strategy; Split with several outputs; 1-D / 3-D Conv, pooling and
BatchNormalization; an ArgMax head; ``verify`` on the two-input model with a counterexample
that replays; the import refusing an unbatched model whose axes it would misread."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nets
import onnxverify as ov
from onnxverify.errors import ModelError
from onnxverify.onnx.importer import import_model
from onnxverify.onnx.reference import OrtModel

METHODS = ["ibp", "lbp", "crown-ibp", "crown-lbp", "crown", "relaxed-crown-2"]
STRATEGIES = ["constant", "tight", "adaptive"]


def _net(model):
    return ov.Network(import_model(model), model=model)


def _inside(ys, lo, hi, slack=1e-5):
    tol = slack * (1 + np.maximum(np.abs(lo), np.abs(hi)))
    assert (ys >= lo - tol).all(), f"lower bound violated by {np.max(lo - ys)}"
    assert (ys <= hi + tol).all(), f"upper bound violated by {np.max(ys - hi)}"


def _ordered(outer, inner, slack=1e-6):
    tol = slack * (1 + np.abs(outer.lower) + np.abs(outer.upper))
    assert (inner.lower >= outer.lower - tol).all(), np.max(outer.lower - inner.lower)
    assert (inner.upper <= outer.upper + tol).all(), np.max(inner.upper - outer.upper)


@pytest.mark.parametrize("name", sorted(nets.STRUCT_BUILDERS))
def test_every_method_and_strategy_is_sound(name):
    rng = np.random.default_rng(3)
    model, (lo, hi) = nets.STRUCT_BUILDERS[name](1)
    net, ort = _net(model), OrtModel(model)
    x0 = rng.uniform(lo, hi, (2,) + net.input_shape)
    assert np.allclose(net.forward(x0), ort(x0.astype(np.float32)).reshape(2, *net.output_shape), atol=1e-5)
    iset = ov.LinfBall(x0, 0.1 * (hi - lo), clip=(lo, hi))
    pts = np.stack([nets.sample_box(rng, iset.lower[i], iset.upper[i], 300) for i in range(2)], 1)
    ys = np.stack([ort(pts[:, i].astype(np.float32)).reshape(300, -1) for i in range(2)], 1)  # (n, 2, n_out)
    for method in METHODS:
        for strategy in (STRATEGIES if method != "ibp" else [None]):
            b = net.bounds(iset, method=method, strategy=strategy, intersect_ibp=False)
            _inside(ys, b.lower.reshape(1, 2, -1), b.upper.reshape(1, 2, -1))
    if name == "convtranspose":  # Theorem 2 is for ReLU-family networks (this one ends in Tanh)
        return
    tight = {m: net.bounds(iset, method=m, strategy="tight", intersect_ibp=False, dtype=np.float64)
             for m in ["ibp", "lbp", "crown-ibp", "crown-lbp", "crown"]}  # Theorem 2
    _ordered(tight["ibp"], tight["lbp"])
    _ordered(tight["ibp"], tight["crown-ibp"])
    _ordered(tight["lbp"], tight["crown-lbp"])
    _ordered(tight["crown-ibp"], tight["crown-lbp"])
    _ordered(tight["crown-lbp"], tight["crown"])


def test_shapes_of_several_inputs_and_outputs():
    """X_i run over a then b (flattened, declaration order); Y_i over y1 then y2."""
    model, _ = nets.two_input_net(0, two_outputs=True)
    net, ort = _net(model), OrtModel(model)
    assert net.input_shape == (7,) and net.output_shape == (3,) and ort.sample_shape == (7,)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 7)).astype(np.float32)
    import onnxruntime as rt

    sess = rt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y1, y2 = sess.run(None, {"a": x[:, :3], "b": x[:, 3:].reshape(3, 2, 2)})
    want = np.concatenate([y1, y2], axis=1)
    assert np.allclose(ort(x), want, atol=1e-6)
    assert np.allclose(net.forward(x), want, atol=1e-5)


def test_input_without_batch_axis_is_one_sample():
    model, _ = nets.nobatch_mlp(0)
    net, ort = _net(model), OrtModel(model)
    assert net.input_shape == (6,) and net.output_shape == (3,)
    x = np.random.default_rng(1).uniform(-1, 1, (4, 6)).astype(np.float32)
    assert ort(x).shape == (4, 3)
    assert np.allclose(net.forward(x), ort(x), atol=1e-5)
    assert net.check().ok


def test_unbatched_model_with_axes_from_the_first_axis_is_refused_naming_the_node():
    W = numpy_helper.from_array(np.ones((5, 4), np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("Flatten", ["r"], ["f"], name="flat", axis=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                          [helper.make_tensor_value_info("f", TensorProto.FLOAT, None)], [W])
    with pytest.raises(ModelError, match=r"node flat \(Flatten\).*no batch axis"):
        import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


def test_float64_model():
    model, _ = nets.two_input_net(2)
    for t in list(model.graph.input) + list(model.graph.output):
        t.type.tensor_type.elem_type = TensorProto.DOUBLE
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    net, ort = _net(model), OrtModel(model)
    x = np.random.default_rng(2).uniform(-1, 1, (5, 7))
    assert np.allclose(net.forward(x), ort(x), atol=1e-5)
    assert net.check().ok


def test_split_with_several_outputs():
    b = nets.Builder(0, (5, 4))
    b.node("Split", ["input", b.const(np.array([2, 3], np.int64))], n_out=2, axis=1)
    p, q = b.nodes[-1].output
    y = b.node("Concat", [b.node("Relu", [q]), b.node("Neg", [p]) if False else p], axis=1)
    model = b.model(b.flatten(y), [20])
    net, ort = _net(model), OrtModel(model)
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    assert np.allclose(net.forward(x), ort(x), atol=1e-6)


@pytest.mark.parametrize("rank", [1, 3])
def test_conv_pool_batchnorm_in_1d_and_3d(rank):
    b = nets.Builder(rank, (2,) + (5,) * rank, opset=13)
    k = [2] * rank
    w = b.weight(3, 2, *k)
    x = b.node("Conv", ["input", b.const(w), b.const(b.weight(3, fan_in=4))], kernel_shape=k, pads=[1] * 2 * rank,
               strides=[2] + [1] * (rank - 1))
    x = b.bn(x, 3)
    x = b.node("Relu", [x])
    x = b.node("MaxPool", [x], kernel_shape=k, pads=[0] * rank + [1] * rank)
    x = b.node("AveragePool", [x], kernel_shape=[2] + [1] * (rank - 1))
    model = b.model(b.node("GlobalAveragePool", [x]), ["?"] * (rank + 1))
    net, ort = _net(model), OrtModel(model)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0, 1, (1,) + net.input_shape)
    assert np.allclose(net.forward(x0), ort(x0.astype(np.float32)), atol=1e-5)
    iset = ov.LinfBall(x0, 0.1)
    pts = nets.sample_box(rng, iset.lower[0], iset.upper[0], 200).astype(np.float32)
    ys = ort(pts).reshape(200, -1)
    for method in ["ibp", "crown"]:
        bd = net.bounds(iset, method=method)
        _inside(ys, bd.lower.reshape(1, -1), bd.upper.reshape(1, -1))


def test_argmax_head_forward_and_index_bounds():
    model, (lo, hi) = nets.argmax_head(0)
    net, ort = _net(model), OrtModel(model)
    rng = np.random.default_rng(0)
    x = rng.uniform(lo, hi, (6,) + net.input_shape).astype(np.float32)
    assert np.array_equal(net.forward(x).astype(np.int64), ort(x))
    assert net.check().ok
    logits, nodes = net.without_index_output()
    assert [n.op for n in nodes] == ["ArgMax"] and logits.output_shape == (5,)
    iset = ov.LinfBall(x[:1], 0.05, clip=(lo, hi))
    pts = nets.sample_box(rng, iset.lower[0], iset.upper[0], 300).astype(np.float32)
    labels = ort(pts)
    for method in ["ibp", "crown"]:
        b = net.bounds(iset, method=method)  # a sound range of indices
        assert b.lower[0] <= labels.min() and labels.max() <= b.upper[0]


def _two_input_property(tmp_path, net, x0, eps, out_index, threshold):
    lines = []
    for i, v in enumerate(x0):
        lines += [f"(declare-const X_{i} Real)"]
    lines += [f"(declare-const Y_{j} Real)" for j in range(net.n_outputs)]
    for i, v in enumerate(x0):
        lines += [f"(assert (>= X_{i} {v - eps:.9f}))", f"(assert (<= X_{i} {v + eps:.9f}))"]
    lines += [f"(assert (>= Y_{out_index} {threshold:.9f}))"]
    path = tmp_path / f"p{out_index}_{threshold:.3f}.vnnlib"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_verify_decides_a_property_on_the_two_input_model(tmp_path):
    from onnxverify.verify import verify
    from onnxverify.vnncomp import replay_counterexample

    model, _ = nets.two_input_net(0)
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    net, ort = ov.load(path), OrtModel(model)
    x0 = np.linspace(-0.5, 0.5, 7)
    eps = 0.05
    pts = nets.sample_box(np.random.default_rng(0), x0 - eps, x0 + eps, 2000).astype(np.float32)
    ys = ort(pts).reshape(len(pts), -1)
    b = net.bounds(ov.Box(x0 - eps, x0 + eps), method="crown")
    # unsafe set Y_0 >= ub + 1: unreachable (unsat); Y_0 >= a sampled value: reachable (sat)
    res = verify(path, _two_input_property(tmp_path, net, x0, eps, 0, float(b.upper[0, 0]) + 1.0), timeout=60)
    assert res.verdict == "unsat", res.summary()
    prop = _two_input_property(tmp_path, net, x0, eps, 0, float(np.quantile(ys[:, 0], 0.9)))
    res = verify(path, prop, timeout=60)
    assert res.verdict == "sat", res.summary()
    x_cex, _ = res.counterexample
    ok, y = replay_counterexample(path, prop, x_cex)
    assert ok
    import onnxruntime as rt

    y_direct = rt.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"a": x_cex[None, :3].astype(np.float32), "b": x_cex[3:].reshape(1, 2, 2).astype(np.float32)})[0]
    assert np.allclose(y, y_direct.reshape(-1), atol=1e-6)
