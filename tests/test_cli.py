"""The CLI commands on the bundled example and on a random model."""
import json

import numpy as np
import onnx
from click.testing import CliRunner

import nets
from onnxverify.cli import main


def test_bundled_bounds_example_runs():
    res = CliRunner().invoke(main, ["bounds"])
    assert res.exit_code == 0, res.output
    assert "verified robust" in res.output and "y1-y0" in res.output


def test_bounds_json(tmp_path):
    model, _ = nets.convnet(0)
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.full((1, 2, 9, 9), 0.5, np.float32))
    out = tmp_path / "b.json"
    res = CliRunner().invoke(main, ["bounds", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"),
                                    "--eps", "0.01", "--json", str(out)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert {"method", "lower", "upper", "time_s"} <= set(d)
    assert np.all(np.asarray(d["lower"]) <= np.asarray(d["upper"]))


def test_check_passes_and_prints_ops(tmp_path):
    model, _ = nets.resnet(0)
    onnx.save(model, tmp_path / "r.onnx")
    res = CliRunner().invoke(main, ["check", str(tmp_path / "r.onnx")])
    assert res.exit_code == 0, res.output
    assert "Conv" in res.output and "OK" in res.output


def test_check_exits_nonzero_on_mismatch(tmp_path, monkeypatch):
    model, _ = nets.mlp(0)
    onnx.save(model, tmp_path / "m.onnx")
    from onnxverify.ops import REGISTRY

    rule = REGISTRY["Relu"]
    monkeypatch.setattr(type(rule), "forward", lambda self, bk, node, x: x)  # a broken rule
    res = CliRunner().invoke(main, ["check", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1 and "MISMATCH" in res.output
