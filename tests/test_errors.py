"""Bad input gives one line on stderr and a non-zero exit, never a traceback."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import nets
import onnxverify as ov
from onnxverify.cli import main


def run(args):
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def assert_one_line_error(code, out, *needles):
    assert code != 0
    lines = [l for l in out.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, out
    assert "Traceback" not in out
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def model_file(tmp_path):
    model, _ = nets.mlp(0)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def test_missing_model(tmp_path):
    assert_one_line_error(*run(["check", str(tmp_path / "nope.onnx")]), "not found")


def test_corrupt_model(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x08\x07this is not protobuf" * 10)
    assert_one_line_error(*run(["check", str(p)]), "cannot read")


def test_unsupported_ops_are_all_named(tmp_path):
    nodes = [helper.make_node("Softmax", ["input"], ["a"], name="soft1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Hardmax", ["b"], ["c"], name="hard1"),
             helper.make_node("LpNormalization", ["c"], ["out"], name="lpn")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    p = tmp_path / "u.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), p)
    code, out = run(["check", str(p)])
    assert_one_line_error(code, out, "Softmax", "Hardmax", "LpNormalization", "soft1", "hard1", "lpn")
    with pytest.raises(ov.UnsupportedOpError) as e:
        ov.load(p)
    assert {op for op, _ in e.value.unsupported} == {"Softmax", "Hardmax", "LpNormalization"}


def test_nan_weights(tmp_path, model_file):
    m = onnx.load(model_file)
    w = numpy_helper.to_array(m.graph.initializer[2]).copy()
    w.flat[0] = np.nan
    m.graph.initializer[2].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[2].name))
    p = tmp_path / "nan.onnx"
    onnx.save(m, p)
    assert_one_line_error(*run(["check", str(p)]), "NaN", m.graph.initializer[2].name)


def test_input_shape_mismatch(tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 5), np.float32))
    assert_one_line_error(*run(["bounds", str(model_file), "--input", str(x), "--eps", "0.1"]), "shape")


def test_nan_input(tmp_path, model_file):
    x = tmp_path / "x.npy"
    a = np.zeros((1, 4, 4), np.float32)
    a[0, 0, 0] = np.inf
    np.save(x, a)
    assert_one_line_error(*run(["bounds", str(model_file), "--input", str(x), "--eps", "0.1"]), "NaN/Inf")


def test_negative_eps(tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 4, 4), np.float32))
    assert_one_line_error(*run(["bounds", str(model_file), "--input", str(x), "--eps", "-0.1"]), "eps")


def test_unknown_method(tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 4, 4), np.float32))
    assert_one_line_error(*run(["bounds", str(model_file), "--input", str(x), "--eps", "0.1", "--method", "magic"]),
                          "magic")


def test_bad_label(tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 4, 4), np.float32))
    assert_one_line_error(*run(["bounds", str(model_file), "--input", str(x), "--eps", "0.1", "--label", "12"]),
                          "label")


def test_missing_input_file(model_file):
    assert_one_line_error(*run(["bounds", str(model_file), "--input", "nope.npy", "--eps", "0.1"]), "not found")


def test_api_errors():
    with pytest.raises(ov.InputError):
        ov.LinfBall(np.zeros(3), -1.0)
    with pytest.raises(ov.InputError):
        ov.LpBall(np.zeros(3), 0.1, p=3)
    with pytest.raises(ov.InputError):
        ov.Box(np.ones(3), np.zeros(3))
    with pytest.raises(ov.ModelError):
        ov.load("/nonexistent/model.onnx")
