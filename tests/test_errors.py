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
    nodes = [helper.make_node("MeanVarianceNormalization", ["input"], ["a"], name="soft1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Hardmax", ["b"], ["c"], name="hard1"),
             helper.make_node("LpNormalization", ["c"], ["out"], name="lpn")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    p = tmp_path / "u.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), p)
    code, out = run(["check", str(p)])
    assert_one_line_error(code, out, "MeanVarianceNormalization", "Hardmax", "LpNormalization", "soft1", "hard1", "lpn")
    with pytest.raises(ov.UnsupportedOpError) as e:
        ov.load(p)
    assert {op for op, _ in e.value.unsupported} == {"MeanVarianceNormalization", "Hardmax", "LpNormalization"}


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


# ----------------------------------------------------------------------------- issue 14: input layout
def _nhwc_model(tmp_path):
    model, _ = nets.nhwc_shape_chain(0)  # input (6, 6, 2): channels last
    path = tmp_path / "nhwc.onnx"
    onnx.save(model, path)
    return path


def test_wrong_layout_is_refused_with_both_shapes(tmp_path):
    path = _nhwc_model(tmp_path)
    x = tmp_path / "chw.npy"
    np.save(x, np.zeros((2, 6, 6), np.float32))  # the right size, channels first
    code, out = run(["bounds", str(path), "--input", str(x), "--eps", "0.1"])
    assert code == 2
    assert_one_line_error(code, out, "(2, 6, 6)", "(6, 6, 2)", "np.transpose(x, (1, 2, 0))")


@pytest.mark.parametrize("shape, batch", [((6, 6, 2), 1), ((3, 6, 6, 2), 3), ((72,), 1), ((4, 72), 4)])
def test_accepted_input_shapes(tmp_path, shape, batch):
    """Exactly these: one sample, a batch, a flat C-order vector, a batch of flat vectors."""
    net = ov.load(_nhwc_model(tmp_path))
    x = np.random.default_rng(0).uniform(0, 1, shape)
    xb = net.prepare_input(x)
    assert xb.shape == (batch, 6, 6, 2) and xb.dtype == np.float32
    np.testing.assert_array_equal(xb.reshape(-1), x.astype(np.float32).reshape(-1))  # C order, no transpose


@pytest.mark.parametrize("shape", [(2, 6, 6), (6, 2, 6), (1, 2, 6, 6), (6, 12), (72, 1), (1, 1, 72), (0, 6, 6, 2),
                                   (5,), ()])
def test_refused_input_shapes(tmp_path, shape):
    net = ov.load(_nhwc_model(tmp_path))
    with pytest.raises(ov.InputError, match=r"\(6, 6, 2\)|empty batch"):
        net.prepare_input(np.zeros(shape))


def test_unit_axes_are_named_in_the_fix(tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((4, 4), np.float32))  # the model takes (1, 4, 4)
    assert_one_line_error(*run(["bounds", str(model_file), "--input", str(x), "--eps", "0.1"]),
                          "(4, 4)", "(1, 4, 4)", "x.reshape((1, 4, 4))")


def test_input_sets_apply_the_same_rule():
    with pytest.raises(ov.InputError, match="per sample"):
        ov.Box(np.zeros((3, 4)), np.ones((3, 4))).batched((4, 3))
    assert ov.Box(np.zeros(12), np.ones(12)).batched((4, 3)).lower.shape == (1, 4, 3)  # a flat VNN-LIB box


# ----------------------------------------------------------------------------- issue 14: --clip
def test_clip_low_above_high_is_refused():
    code, out = run(["bounds", "--clip", "1", "0"])
    assert code == 2
    assert_one_line_error(code, out, "LO 1 is above HI 0")
    with pytest.raises(ov.InputError, match="above"):
        ov.LinfBall(np.zeros(3), 0.1, clip=(1.0, 0.0))


def test_sample_outside_the_clip_range_is_refused_with_the_count():
    code, out = run(["bounds", "--clip", "0.5", "0.6"])  # the bundled image spans [0, 1]
    assert code == 2
    assert_one_line_error(code, out, "of 64 input value(s) lie outside the clip range [0.5, 0.6]")
    assert "verified robust" not in out


def test_clip_keeps_the_sample_and_never_gives_an_empty_box():
    x0 = np.array([0.0, 0.5, 1.0, 1.0 + 1e-9])  # the last one: float rounding, within CLIP_SLACK
    b = ov.LinfBall(x0, 0.1, clip=(0.0, 1.0))
    assert (b.lower <= b.upper).all() and (b.lower <= np.minimum(x0, 1.0)).all()
    np.testing.assert_allclose(b.upper[:3], [0.1, 0.6, 1.0])
    with pytest.raises(ov.InputError, match="1 of 4"):
        ov.LinfBall(np.array([0.0, 0.5, 1.0, 1.2]), 0.1, clip=(0.0, 1.0))
    with pytest.raises(ov.InputError, match="NaN"):
        ov.LinfBall(x0, 0.1, clip=(np.nan, 1.0))


# ----------------------------------------------------------------------------- issue 14: one error policy
def test_unknown_backend_is_a_user_error():
    assert_one_line_error(*run(["bounds", "--backend", "foo"]), "unknown backend 'foo'")
    code, _ = run(["bounds", "--backend", "foo"])
    assert code == 2


def test_missing_torch_for_backend_is_a_user_error(monkeypatch):
    import sys

    import onnxverify.backend as B

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setattr(B, "_BACKENDS", {"numpy": B.NUMPY})
    code, out = run(["bounds", "--backend", "torch"])
    assert code == 2
    assert_one_line_error(code, out, "needs torch", "pip install")


def test_missing_cupy_for_backend_is_a_user_error(monkeypatch):
    import sys

    import onnxverify.backend as B

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(B, "_BACKENDS", {"numpy": B.NUMPY})
    code, out = run(["stats", "m.onnx", "--input", "x.npy", "--eps", "0.1", "--backend", "cupy"])
    assert code == 2  # refused before the (missing) model is even opened
    assert_one_line_error(code, out, "cupy", "onnxverify[gpu]")


def test_internal_errors_say_please_report(monkeypatch, model_file, tmp_path):
    import onnxverify.network as N

    def broken(self, *a, **k):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(N.Network, "bounds", broken)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 4, 4), np.float32))
    code, out = run(["bounds", str(model_file), "--input", str(x), "--eps", "0.1"])
    assert code == 3
    assert_one_line_error(code, out, "internal error TypeError", "please report", "--debug")
    res = CliRunner().invoke(main, ["--debug", "bounds", str(model_file), "--input", str(x), "--eps", "0.1"])
    assert isinstance(res.exception, TypeError)  # --debug: the traceback, not the line


@pytest.mark.parametrize("args, needle", [
    (["bounds", "--nope"], "no such option '--nope'"),
    (["bounds", "--norm", "7"], "invalid value for '--norm'"),
    (["bounds", "--eps", "x"], "'x' is not a valid float"),
    (["verify"], "missing argument 'MODEL'"),
    (["nosuchcommand"], "no such command"),
])
def test_usage_errors_follow_the_same_policy(args, needle):
    code, out = run(args)
    assert code == 2
    assert_one_line_error(code, out, needle, "--help")
    assert "Usage:" not in out


def test_other_option_checks(tmp_path, model_file):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 4, 4), np.float32))
    base = ["bounds", str(model_file), "--input", str(x), "--eps", "0.1"]
    assert_one_line_error(*run(base + ["--max-memory", "-1"]), "--max-memory must be a positive")
    assert_one_line_error(*run(["bounds", str(model_file), "--input", str(x), "--eps", "nan"]), "--eps must be")
    assert_one_line_error(*run(["check", str(model_file), "--samples", "0"]), "at least one sample")
    assert_one_line_error(*run(base + ["--json", str(tmp_path / "no" / "such" / "dir" / "b.json")]),
                          "No such file or directory")
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    assert_one_line_error(*run(["bounds", str(model_file), "--input", str(tmp_path / "x.npz"), "--eps", "0.1"]),
                          ".npz archive")
