"""Minimal reproducers of what the fuzz tests (tests/test_fuzz_*.py) found.

Every bug found is fixed and its reproducer here is an ordinary test: a malformed model must
give one :class:`~onnxverify.errors.ModelError` line (CLI exit 2), not an internal
ValueError / IndexError / KeyError (exit 3). A new bug in code another change owns may get a
strict xfail here and an entry in fuzz_worker.KNOWN until it is fixed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxverify as ov


def _model(nodes, inits, in_shape=(1, 4), out_shape=None, opset=13):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _load(model, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return ov.load(path)


def test_initializer_dims_do_not_match_its_data(tmp_path):
    w = _init("W", np.ones((3, 4)))
    del w.dims[:]
    w.dims.extend([2, 2])  # 12 values declared as (2, 2)
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [w])
    with pytest.raises(ov.ModelError, match="W"):
        _load(m, tmp_path)


def test_gemm_bias_of_the_wrong_size(tmp_path):
    m = _model([helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=1)],
               [_init("W", np.ones((3, 4))), _init("C", np.ones(2))])  # output has 3 values, C has 2
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_gemm_with_one_input(tmp_path):
    m = _model([helper.make_node("Gemm", ["x"], ["y"])], [])
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_add_with_one_input(tmp_path):
    m = _model([helper.make_node("Add", ["x"], ["y"])], [])
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_add_of_a_constant_that_does_not_broadcast(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "B"], ["y"])],
               [_init("B", np.ones((3, 5)))])  # (1, 4) + (3, 5)
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_reshape_with_three_inputs(tmp_path):
    m = _model([helper.make_node("Reshape", ["x", "S", "S"], ["y"])], [numpy_helper.from_array(
        np.array([1, 4], dtype=np.int64), "S")])
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_concat_without_axis(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Concat", ["r", "r"], ["y"])], [])
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_interval_bounds_stay_numbers_when_float32_overflows():
    import nets
    from onnxverify.bounds import compute_bounds

    m, _ = nets.mlp(0)
    t = next(t for t in m.graph.initializer if t.name == "c10")  # the first hidden layer's bias
    a = numpy_helper.to_array(t).copy()
    a[0] = 3e38
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    g = ov.import_model(m)
    x = np.full((1,) + g.input_shape, 0.5)
    from onnxverify.ops import evaluate

    assert np.isfinite(evaluate(g, x.astype(np.float32))).all()  # onnxruntime and the IR: finite outputs
    with np.errstate(all="ignore"):
        b = compute_bounds(g, ov.LinfBall(x, 0.0), "ibp")
    assert not np.isnan(np.asarray(b.lower)).any() and not np.isnan(np.asarray(b.upper)).any()


def test_network_bounds_never_returns_nan():
    """Fixed here (network.py): NaN bounds from an overflow become -inf / +inf (sound)."""
    import nets

    m, _ = nets.mlp(0)
    t = next(t for t in m.graph.initializer if t.name == "c10")
    a = numpy_helper.to_array(t).copy()
    a[0] = 3e38
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    net = ov.Network(ov.import_model(m), model=m)
    x = np.full((1,) + net.input_shape, 0.5)
    with np.errstate(all="ignore"):
        b = net.bounds(ov.LinfBall(x, 0.0), "ibp")
        y = net.forward(x)
    assert not np.isnan(b.lower).any() and not np.isnan(b.upper).any()
    assert (b.lower <= y).all() and (y <= b.upper).all()


def test_a_deadline_during_input_bisection_is_a_timeout(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_verify import prop, tiny_net

    from onnxverify.verify import cascade as C
    from onnxverify.verify.deadline import TimeUp

    calls = []
    real = C.Solver.bounds

    def bounds(self, *a, **k):
        calls.append(1)
        if len(calls) > 1:  # the first call is the IBP step; the next ones are the bisection's
            raise TimeUp()
        return real(self, *a, **k)

    monkeypatch.setattr(C.Solver, "bounds", bounds)

    def box_bounds(self, *a, **k):  # the bisection bounds its boxes through BoxBounder
        raise TimeUp()

    from onnxverify.verify.box_bounds import BoxBounder

    monkeypatch.setattr(BoxBounder, "__call__", box_bounds)
    res = C.verify(tiny_net(tmp_path / "t.onnx"), prop(tmp_path, "(assert (<= Y_0 -0.5))\n"), timeout=20,
                   methods="ibp", attack=False)
    assert res.verdict == "timeout", (res.verdict, res.message)


@pytest.mark.parametrize("timeout, code, needle", [("inf", 0, None), ("1e300", 2, "at most"), ("-inf", 2, "> 0")])
def test_verify_timeout_extremes(tmp_path, timeout, code, needle):
    """Found by test_fuzz_cli: --timeout inf started a watchdog thread that died with a
    traceback (OverflowError), 1e300 overflowed the alarm (verdict error). Now inf is no
    limit and the largest finite limit is 1e6 s."""
    from click.testing import CliRunner
    from test_verify import prop, tiny_net

    from onnxverify.cli import main

    res = CliRunner().invoke(main, ["verify", str(tiny_net(tmp_path / "t.onnx")),
                                    str(prop(tmp_path, "(assert (>= Y_0 2.5))\n")), "--timeout", timeout])
    assert res.exit_code == code and "Traceback" not in res.output, res.output
    if needle:
        assert needle in res.stderr
    else:
        assert res.stdout.strip() == "unsat"


def _conv_model(inputs=("x", "W"), **attrs):
    w = _init("W", np.ones((2, 1, 3, 3)))
    node = helper.make_node("Conv", list(inputs), ["y"], kernel_shape=[3, 3], **attrs)
    return _model([node], [w], in_shape=(1, 1, 5, 5))


def test_unsupported_node_without_name_or_output(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("NoSuchOp", ["y"], [])], [])
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_conv_with_one_input(tmp_path):
    with pytest.raises(ov.ModelError):
        _load(_conv_model(inputs=("x",)), tmp_path)


def test_conv_attribute_of_undefined_type(tmp_path):
    m = _conv_model()
    a = m.graph.node[0].attribute.add()
    a.name, a.type = "dilations", onnx.AttributeProto.UNDEFINED
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_conv_pads_too_short(tmp_path):
    with pytest.raises(ov.ModelError):
        _load(_conv_model(pads=[1, 1]), tmp_path)


def test_initializer_of_undefined_type(tmp_path):
    w = _init("W", np.ones((4, 3)))
    w.data_type = TensorProto.UNDEFINED
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [w])
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_matmul_with_one_input(tmp_path):
    with pytest.raises(ov.ModelError):
        _load(_model([helper.make_node("MatMul", ["x"], ["y"])], []), tmp_path)


def test_flatten_axis_of_undefined_type(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["y"])], [])
    a = m.graph.node[1].attribute.add()
    a.name, a.type = "axis", onnx.AttributeProto.UNDEFINED
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_maxpool_without_kernel_shape(tmp_path):
    with pytest.raises(ov.ModelError):
        _load(_model([helper.make_node("MaxPool", ["x"], ["y"])], [], in_shape=(1, 1, 4, 4)), tmp_path)


def test_squeeze_axes_not_1d(tmp_path):
    axes = numpy_helper.from_array(np.array([[1]], dtype=np.int64), "A")
    m = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Squeeze", ["r", "A"], ["y"])], [axes],
               in_shape=(1, 1, 4))
    with pytest.raises(ov.ModelError):
        _load(m, tmp_path)


def test_huge_max_memory_means_no_limit():
    """Found by test_fuzz_cli: --max-memory 1e308 overflowed int(GB * 2**30) (exit 3)."""
    from click.testing import CliRunner

    from onnxverify.cli import main

    res = CliRunner().invoke(main, ["bounds", "--max-memory", "1e308"])
    assert res.exit_code == 0 and "verified robust" in res.output, res.output


def test_point_bounds_never_cross():
    """Fuzz finding: at eps 0, LBP/tight's float32 lower bound lay 2e-6 above IBP's upper bound
    on the digits MLP, and their intersection had lower > upper. Crossed entries now take
    the hull of the two bounds."""
    from onnxverify.specs.input_sets import LinfBall

    data = Path(ov.__file__).parent / "data"
    net = ov.load(str(data / "digits_mlp.onnx"))
    x = np.load(data / "digits_x0.npy")[None]
    for method in ("lbp", "crown-lbp", "crown", "crown-ibp"):
        for strategy in ("constant", "tight", "adaptive"):
            b = net.bounds(LinfBall(x, 0.0), method=method, strategy=strategy)
            assert (b.lower <= b.upper).all(), (method, strategy, (b.lower - b.upper).max())


def test_intersect_takes_the_hull_where_bounds_cross():
    from onnxverify.backend import get_backend
    from onnxverify.bounds.engine import intersect

    bk = get_backend("numpy")
    a = (np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 3.0]))
    b = (np.array([0.5, 1.0 + 1e-6, 1.0]), np.array([2.0, 2.0, 2.5]))
    lo, hi = intersect(bk, a, b)
    np.testing.assert_array_equal(lo, [0.5, 1.0, 2.0])  # the middle entry crossed: hull [1, 2]
    np.testing.assert_array_equal(hi, [1.0, 2.0, 2.5])


def test_op_type_that_is_not_text(tmp_path):
    """Fuzz finding: a bit flip inside an op type makes protobuf return bytes; the importer's
    error message then failed to join them (TypeError, exit 3)."""
    data = _model([helper.make_node("Relu", ["x"], ["y"], name="nodeA")], []).SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(b"Relu", b"R\xfflu"))
    with pytest.raises(ov.ModelError, match="nodeA has an op type that is not UTF-8 text"):
        ov.load(str(path))


def test_dangling_input_of_a_nameless_node_without_outputs(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["nowhere"], [])], [])
    with pytest.raises(ov.ModelError, match="node #1 .*reads 'nowhere'"):
        _load(m, tmp_path)
