"""The CLI commands on the bundled example and on a random model."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import nets
import onnxverify as ov
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

    rule = REGISTRY.rule("Relu")
    monkeypatch.setattr(type(rule), "forward", lambda self, bk, node, x: x)  # a broken rule
    res = CliRunner().invoke(main, ["check", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1 and "MISMATCH" in res.output


# ----------------------------------------------------------------------------- issue 14
def _large_input_problem(tmp_path):
    """A Flatten-Gemm-Relu-Gemm net on (1, 33, 33) = 1089 inputs (> LARGE_INPUT) and an
    l_inf robustness property around 0.5."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    n = 33 * 33
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "W1", "b1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)],
        "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 33, 33])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array((rng.normal(0, 1, (8, n)) / np.sqrt(n)).astype(np.float32), "W1"),
         numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
         numpy_helper.from_array(rng.normal(0, 1, (3, 8)).astype(np.float32), "W2"),
         numpy_helper.from_array(np.zeros(3, np.float32), "b2")])
    model = tmp_path / "big.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), model)
    lines = [f"(declare-const X_{i} Real)" for i in range(n)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
    lines += [f"(assert (>= X_{i} 0.49))\n(assert (<= X_{i} 0.51))" for i in range(n)]
    lines.append("(assert (>= Y_1 Y_0))")
    prop = tmp_path / "big.vnnlib"
    prop.write_text("\n".join(lines) + "\n")
    return model, prop


def test_verify_and_run_use_the_same_cascade_on_large_inputs(tmp_path, monkeypatch):
    """Without --methods both pass methods=None, so verify()'s large-input rule (no
    forward-map methods above LARGE_INPUT values) applies to both."""
    from onnxverify.verify import cascade as C
    from onnxverify.vnncomp.runner import verify_task

    model, prop = _large_input_problem(tmp_path)
    seen = []
    real_init = C.Solver.__init__

    def spy(self, net, ort, p, t0, timeout, cascade, *a, **k):
        seen.append(list(cascade))
        real_init(self, net, ort, p, t0, timeout, cascade, *a, **k)

    monkeypatch.setattr(C.Solver, "__init__", spy)
    res = CliRunner().invoke(main, ["verify", str(model), str(prop), "--timeout", "20"])
    assert res.exit_code == 0, res.output
    verify_task({"onnx": str(model), "vnnlib": str(prop), "timeout": 20, "methods": None,
                 "result_path": str(tmp_path / "r.txt")})  # what each `run` worker does
    assert len(seen) == 2 and seen[0] == seen[1], seen
    assert not any(m in ("lbp", "crown-lbp") or m.startswith("relaxed-crown") for m, _ in seen[0]), seen[0]
    assert ("crown", "adaptive") in seen[0]
    # an explicit --methods is used as given
    res = CliRunner().invoke(main, ["verify", str(model), str(prop), "--timeout", "20", "--methods", "ibp,crown-lbp"])
    assert res.exit_code == 0, res.output
    assert seen[-1] == [("ibp", None), ("crown-lbp", None)]


def test_compare_table_min_margin_is_the_minimum():
    from onnxverify.report.compare import compare_methods

    model, _ = nets.mlp(0)
    net = ov.Network(ov.import_model(model), model=model)
    x = np.random.default_rng(0).uniform(0, 1, (3,) + net.input_shape)
    labels = net.forward(x).argmax(1)
    spec = ov.margin_spec(labels, net.n_outputs)
    iset = ov.LinfBall(x, 0.05)
    (r,) = compare_methods(net, iset, spec, [("crown", "tight")])
    b = net.bounds(iset, method="crown", strategy="tight", spec=spec)
    assert r.margin_lower == pytest.approx(float(b.lower.min()))  # over every sample and margin
    assert r.verified == int((b.lower > 0).all(axis=1).sum()) and r.n == 3


def test_compare_plot_needs_matplotlib_before_any_work(tmp_path, monkeypatch):
    import sys

    import onnxverify.cli.model as M

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(M, "load_network", lambda *a: pytest.fail("the model was loaded before the check"))
    res = CliRunner().invoke(main, ["compare", "m.onnx", "--input", "x.npy", "--eps", "0.01", "--plot",
                                    str(tmp_path / "p.png")])
    assert res.exit_code == 2 and "needs matplotlib" in res.output and "method" not in res.output


def test_compare_plot_progress_title_and_legend(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import onnxverify.report.compare as RC

    model, _ = nets.mlp(0)
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.full((1, 1, 4, 4), 0.5, np.float32))
    seen = {}
    real = RC.plot_tightness

    def spy(*a, **k):
        seen.update(k)
        seen["curves"] = real(*a, **k)
        return seen["curves"]

    monkeypatch.setattr(RC, "plot_tightness", spy)
    out = tmp_path / "t.png"
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"),
                                    "--eps", "0.02", "--label", "1", "--plot", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000
    assert "(1/5)" in res.stderr and "(5/5)" in res.stderr and "from the table" in res.stderr
    title = seen["title"]
    assert "m.onnx" in title and "label 1" in title and "l_inf" in title and "0.005, 0.01, 0.02, 0.03, 0.04" in title
    assert all(len(v) == 5 for v in seen["curves"].values())


def test_coinciding_curves_share_one_legend_entry():
    from onnxverify.report.compare import _groups

    g = _groups({"ibp": [1.0, 2.0], "crown-ibp/tight": [0.5, 1.0], "crown-ibp/adaptive": [0.5, 1.0],
                 "crown/tight": [0.4, np.nan]})
    assert [labels for labels, _ in g] == [["ibp"], ["crown-ibp/tight", "crown-ibp/adaptive"], ["crown/tight"]]


def test_compare_help_documents_the_eps_grid():
    res = CliRunner().invoke(main, ["compare", "--help"])
    assert "0.25, 0.5, 1, 1.5, 2" in " ".join(res.output.split()) and "--plot-eps" in res.output


@pytest.mark.slow
def test_paramramp_example_writes_nothing_into_the_working_directory(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "paramramp_example", Path(__file__).resolve().parents[1] / "examples" / "paramramp_example.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    ex.main(["--steps", "4"])  # no --out: a new temporary folder
    printed = capsys.readouterr().out
    out_dir = Path(printed.split("outputs go to ", 1)[1].split()[0])
    assert out_dir.parent == tmp and list(cwd.iterdir()) == []
    assert (out_dir / "paramramp_digits.onnx").is_file() and (out_dir / "x0.npy").is_file()


def test_test_script_is_valid_and_ci_runs_it():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / "scripts" / "test.sh").read_text()
    assert subprocess.run(["bash", "-n", str(root / "scripts" / "test.sh")]).returncode == 0
    assert "ONNXVERIFY_TORCH" in script and "CUDA build" in script  # says what it installs, lets you pick
    assert "bash scripts/test.sh" in (root / ".ci" / "run").read_text()
