"""The ONNX model zoo of onnxverify.training.models and the `onnxverify model` command (no torch)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxverify.cli import main
from onnxverify.ops import evaluate
from onnxverify.onnx.importer import import_model
from onnxverify.onnx.reference import OrtModel
from onnxverify.training import models as M
from onnxverify.training.models import ARCHITECTURES, build_model, canonical_name, model_metadata

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}


def _ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("activation", ["relu", "leaky", "paramramp"])
def test_every_architecture_runs_on_digits(name, activation):
    """8x8 inputs work for every architecture; onnxruntime == the verifier's IR forward."""
    model = build_model(name, activation, input_shape=(1, 8, 8), num_classes=10, seed=1)
    assert model.ir_version == M.IR_VERSION == 8
    assert [(o.domain, o.version) for o in model.opset_import if o.domain == ""] == [("", 17)]
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 8, 8)).astype(np.float32)
    y = OrtModel(model)(x)
    assert y.shape == (4, 10)
    ir = import_model(model)
    np.testing.assert_allclose(np.asarray(evaluate(ir, x)), y, atol=1e-4, rtol=1e-4)
    ops = set(ir.op_counts())
    want = {"relu": "Relu", "leaky": "LeakyRelu", "paramramp": "ParamRamp"}[activation]
    assert want in ops
    meta = model_metadata(model)
    assert meta["architecture"] == name and meta["activation"] == activation


def test_layer_structure_matches_paper_notes():
    """DM-small: conv 16 4x4/2 p2 -> conv 32 4x4/1 p2 -> FC 100 -> FC 10 (PAPER_NOTES §3)."""
    m = build_model("dm-small", input_shape=(1, 28, 28))
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    inits = {t.name: t for t in m.graph.initializer}
    assert [tuple(inits[c.input[1]].dims) for c in convs] == [(16, 1, 4, 4), (32, 16, 4, 4)]
    attrs = [{a.name: list(a.ints) for a in c.attribute} for c in convs]
    assert [a["strides"] for a in attrs] == [[2, 2], [1, 1]]
    assert [a["pads"] for a in attrs] == [[2] * 4, [2] * 4]
    gemms = [n for n in m.graph.node if n.op_type == "Gemm"]
    assert [tuple(inits[g.input[1]].dims)[0] for g in gemms] == [100, 10]
    # MNIST: 28 -> 15 -> 16, so FC 100 sees 32*16*16 inputs
    assert tuple(inits[gemms[0].input[1]].dims) == (100, 32 * 16 * 16)

    large = build_model("dm-large", input_shape=(3, 32, 32))
    assert _ops(large).count("Conv") == 5 and _ops(large).count("Gemm") == 2
    assert "BatchNormalization" not in _ops(large)
    cnn7 = build_model("cnn7-bn", input_shape=(3, 32, 32))
    assert _ops(cnn7).count("BatchNormalization") == 6  # 5 convs + FC 512, none after the last FC
    medium = build_model("dm-medium", input_shape=(1, 28, 28))
    assert _ops(medium).count("Conv") == 4 and _ops(medium).count("Gemm") == 3


def test_bn_option_and_ibp_fold():
    m = build_model("dm-small", "relu", batchnorm=True, input_shape=(1, 8, 8))
    assert _ops(m).count("BatchNormalization") == 3
    # the verifier fuses the inference-mode BN into the conv/linear before it
    assert "Affine" not in import_model(m).op_counts()
    assert "Affine" in import_model(m, fuse=False).op_counts()


def test_paramramp_initializer_and_function():
    m = build_model("mlp", "paramramp", input_shape=(1, 8, 8), eta=0.02, r_init=0.5, hidden=(7, 5))
    ramps = [n for n in m.graph.node if n.domain == "onnxverify"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    assert [inits[n.input[1]].shape for n in ramps] == [(7,), (5,)]
    assert all(np.all(inits[n.input[1]] == 0.5) for n in ramps)
    assert [a.f for n in ramps for a in n.attribute if a.name == "eta"] == [pytest.approx(0.02)] * 2
    assert any(f.domain == "onnxverify" and f.name == "ParamRamp" for f in m.functions)
    onnx.checker.check_model(m, full_check=True)


def test_ibp_initialisation_statistics():
    """std = sqrt(2 pi) / fan_in for every layer but the last, zero biases; seeded."""
    m = build_model("dm-large", input_shape=(3, 32, 32), init="ibp", seed=3)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    w = inits["conv4.weight"]
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    assert np.std(w) == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.05)
    assert np.all(inits["conv4.bias"] == 0)
    last = inits["fc7.weight"]  # the last layer keeps the default U(-1/sqrt(fan_in), ..)
    assert np.abs(last).max() <= 1 / math.sqrt(last.shape[1]) and np.std(last) > 0.5 / math.sqrt(3 * last.shape[1])
    again = build_model("dm-large", input_shape=(3, 32, 32), init="ibp", seed=3)
    assert again.SerializeToString() == m.SerializeToString()
    other = build_model("dm-large", input_shape=(3, 32, 32), init="ibp", seed=4)
    assert other.graph.initializer[0].raw_data != m.graph.initializer[0].raw_data


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "dm-huge"}, "unknown architecture"),
    ({"name": "dm-small", "activation": "gelu"}, "unknown activation"),
    ({"name": "dm-small", "input_shape": (8, 8)}, "input_shape"),
    ({"name": "mlp", "num_classes": 1}, "num_classes"),
    ({"name": "mlp", "eta": 1.5}, "eta"),
    ({"name": "dm-small", "hidden": (3,)}, "mlp"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_tiny_inputs_work():
    """The paddings of PAPER_NOTES §3 keep every conv output >= 1x1, even for 1x1 inputs."""
    for name in ARCHITECTURES:
        m = build_model(name, input_shape=(2, 1, 1), num_classes=3)
        assert OrtModel(m)(np.ones((1, 2, 1, 1), np.float32)).shape == (1, 3)


def test_aliases():
    assert canonical_name("small") == "dm-small"
    assert canonical_name("CNN-7+BN") == "cnn7-bn"


def test_cli_model(tmp_path):
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["model", "dm-medium", "-o", str(out), "--activation", "paramramp",
                                    "--bn", "--input-shape", "1,8,8", "--classes", "7"])
    assert res.exit_code == 0, res.output
    m = onnx.load(str(out))
    assert "dm-medium" in res.output and "ParamRamp x6" in res.output
    assert _ops(m).count("BatchNormalization") == 6
    assert OrtModel(m)(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 7)
    res = CliRunner().invoke(main, ["model", "--list"])
    assert res.exit_code == 0 and "cnn7-bn" in res.output and "dm-large" in res.output
    res = CliRunner().invoke(main, ["model", "dm-small", "-o", str(out), "--input-shape", "2,2"])
    assert res.exit_code != 0 and "C,H,W" in res.output
    res = CliRunner().invoke(main, ["model", "nope", "-o", str(out)])
    assert res.exit_code == 2 and "unknown architecture" in res.output


def test_torch_free_modules():
    """models/config/cli (and the package) import without torch: the verifier CLI must work without it."""
    root = Path(M.__file__).parent
    import onnxverify.cli.train as cli_mod

    cli_train = Path(cli_mod.__file__)  # wherever the package lives (a worktree's symlinked training/ too)
    for path in [root / n for n in ("models.py", "config.py", "__init__.py")] + [cli_train]:
        src = path.read_text()
        assert "\nimport torch" not in src and "\nfrom torch" not in src, path.name
    code = ("import sys; import onnxverify.cli, onnxverify.training, onnxverify.cli.train; "
            "from onnxverify.training.models import build_model; build_model('dm-small', input_shape=(1,8,8)); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
