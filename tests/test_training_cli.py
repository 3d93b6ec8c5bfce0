"""What a user of the training commands meets: help with defaults, one-line errors (exit 2) for
missing torch / scikit-learn and wrong data, the model card written before the evaluation and
found again from another directory, the plan printed before long work, and `plot`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxverify.cli import main
from onnxverify.training.models import build_model

REPO = Path(__file__).resolve().parents[1]
CODE = "import sys; {block}; from onnxverify.cli import main; main()"


def _run_blocked(block_modules, args, cwd):
    """Run the CLI in a fresh interpreter where ``block_modules`` cannot be imported."""
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in block_modules) or "pass"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", CODE.format(block=block)] + args, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_help_shows_help_and_default_of_every_option():
    from onnxverify.cli.train import train_cmd

    res = CliRunner().invoke(main, ["train", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    no_default = {"output", "config_file", "resume", "help"}
    for p in train_cmd.params:
        if not p.param_type_name == "option":
            continue
        assert p.help, f"--{p.name} has no help text"
        if p.name not in no_default:
            assert "[default" in p.help or p.show_default, f"--{p.name} does not show its default"
    assert "digits-quick: 6" in text  # --epochs from the default preset
    assert "mnist-paper: dm-large, ibp, eps 0.4, 200 epochs" in text  # the presets' table


def test_train_without_torch_is_one_error_line_exit_2(tmp_path):
    onnx.save(build_model("mlp", input_shape=(1, 8, 8)), str(tmp_path / "m.onnx"))
    r = _run_blocked(["torch", "onnx2torch"], ["train", "m.onnx", "-o", "o.onnx"], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: training needs torch")
    assert "pip install" in lines[0] and "Traceback" not in r.stderr


def test_evaluate_without_scikit_learn_is_one_error_line_exit_2(tmp_path):
    onnx.save(build_model("mlp", input_shape=(1, 8, 8)), str(tmp_path / "m.onnx"))
    r = _run_blocked(["sklearn"], ["evaluate", "m.onnx", "--data", "digits", "--eps", "0.1"], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "scikit-learn" in lines[0] and lines[0].startswith("error:")
    assert "internal" not in r.stderr


def test_model_for_other_images_is_one_clear_error(tmp_path):
    from test_training_data import _tiny_mnist

    _tiny_mnist(tmp_path / "mnist", True, n_train=8, n_test=4)
    onnx.save(build_model("mlp", input_shape=(1, 8, 8)), str(tmp_path / "digits.onnx"))
    res = CliRunner().invoke(main, ["evaluate", str(tmp_path / "digits.onnx"), "--data", f"mnist:{tmp_path / 'mnist'}",
                                    "--eps", "0.1"])
    assert res.exit_code == 2
    assert "(1, 8, 8)" in res.output and "(1, 28, 28)" in res.output and "internal" not in res.output
    assert "error:" in res.output and "InvalidArgument" not in res.output


def _train_tiny(tmp_path, monkeypatch, extra=()):
    from test_training_data import _tiny_mnist

    work = tmp_path / "a"
    _tiny_mnist(work / "data", True, n_train=64, n_test=16)
    monkeypatch.chdir(work)
    onnx.save(build_model("mlp", "relu", input_shape=(1, 28, 28), hidden=(8,)), "m.onnx")
    args = ["train", "m.onnx", "--data", "mnist:data", "--eps", "0.05", "--epochs", "2", "--eps-start", "0",
            "--eps-ramp", "1", "--batch-size", "32", "--threads", "1", "--no-progress", "--pgd-steps", "3",
            "--pgd-restarts", "1", "--eval-samples", "16", "-o", "out/trained.onnx"] + list(extra)
    return CliRunner().invoke(main, args), work


def test_card_before_evaluation_plan_first_and_data_found_from_elsewhere(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    res, work = _train_tiny(tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    out = res.output
    # the plan comes before training, again before the evaluation, and the card before the evaluation
    assert out.index("final evaluation at eps 0.05") < out.index("epoch 1/2")
    assert out.index("wrote out/trained.card.json (evaluation pending)") < out.index("eps 0.05: clean error")
    for phase in ("clean (onnxruntime)", "ibp (onnxverify)", "PGD 3x1", "crown-lbp"):
        assert phase in out, phase
    card = json.loads((work / "out" / "trained.card.json").read_text())
    assert card["evaluation"]["status"] == "complete" and "0.05" in card["final_errors"]
    assert card["input_space"] == "raw"
    assert Path(card["data"]["path"]).is_absolute() and card["data"]["path_from_card"] == os.path.join("..", "data")
    # evaluate from another directory: the card's data set is found
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    res = CliRunner().invoke(main, ["evaluate", str(work / "out" / "trained.onnx"), "--eps", "0.05",
                                    "--methods", "ibp"])
    assert res.exit_code == 0, res.output
    assert f"data: mnist:{work / 'data'}" in res.output
    # and relative to the card when the folder moved
    moved = tmp_path / "moved"
    (work).rename(moved)
    res = CliRunner().invoke(main, ["evaluate", str(moved / "out" / "trained.onnx"), "--eps", "0.05",
                                    "--methods", "ibp"])
    assert res.exit_code == 0, res.output
    assert "data: mnist:" in res.output and "moved" in res.output


def test_interrupted_evaluation_keeps_the_model_and_its_card(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import onnxverify.training.evaluate as E

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "evaluate_onnx", interrupted)
    res, work = _train_tiny(tmp_path, monkeypatch)
    assert res.exit_code != 0
    assert (work / "out" / "trained.onnx").is_file()
    card = json.loads((work / "out" / "trained.card.json").read_text())
    assert card["evaluation"]["status"] == "pending" and card["training"]["epochs"] == 2
    assert card["export_check"]["ok"] and card["final_errors"] == {}


def test_plot_command(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "run" / "train" / "log.jsonl"
    log.parent.mkdir(parents=True)
    recs = []
    for e in range(1, 6):
        recs.append({"epoch": e, "lr": 1e-3 if e < 4 else 1e-4, "eps": min(0.1, 0.03 * e), "kappa": 1 - 0.1 * e,
                     "beta": 0.0, "eta": 0.01 / e, "loss": 2.0 / e, "loss_clean": 1.0 / e, "loss_robust": 3.0 / e,
                     "train_clean_err": 0.5 / e, "train_ibp_verified_err": 0.9 / e, "test_clean_err": 0.4 / e,
                     "test_ibp_verified_err": 0.95 / e, "test_pgd_err": 0.6 / e, "eps_eval": 0.1, "time_s": 2.0,
                     "status": {"act1": {"left dead": 0.2, "left unstable": 0.1, "alive": 0.3, "right unstable": 0.1,
                                         "right dead": 0.1, "unstable": 0.2},
                                "act2": {"left dead": 0.5, "alive": 0.4, "unstable": 0.1, "left unstable": 0.0,
                                         "right unstable": 0.0, "right dead": 0.0}}})
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = tmp_path / "curves.png"
    res = CliRunner().invoke(main, ["plot", str(log.parent), str(log), "-o", str(out), "--title", "toy run"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(out) as im:
        w, h = im.size
        pixels = np.asarray(im.convert("L"))
    assert w > 1000 and h > 600 and pixels.std() > 10  # a drawn figure, not a blank canvas
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"epoch": 1}\nnot json\n')
    res = CliRunner().invoke(main, ["plot", str(bad), "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "bad.jsonl:2" in res.output
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "not found" in res.output
