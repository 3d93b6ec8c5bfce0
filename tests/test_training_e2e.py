"""End to end on the bundled digits: `onnxverify model` -> `train` -> export -> verify -> `evaluate`
(seconds), plus the per-epoch log against the schedules, resume, config files and CLI errors."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

import onnxverify  # noqa: E402
from onnxverify.cli import main  # noqa: E402
from onnxverify.onnx.reference import OrtModel  # noqa: E402
from onnxverify.training.config import make_config  # noqa: E402
from onnxverify.training.data import load_digits_dataset, subset  # noqa: E402
from onnxverify.training.models import build_model  # noqa: E402
from onnxverify.training.tied import available_methods  # noqa: E402

QUICK = ["--data", "digits", "--n-train", "256", "--n-test", "100", "--batch-size", "64", "--threads", "1",
         "--pgd-steps", "5", "--pgd-restarts", "1", "--no-progress", "--eval-samples", "100"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def _invoke(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    return res


def test_cli_model_train_export_verify_evaluate(tmp_path):
    model = tmp_path / "m.onnx"
    out = tmp_path / "trained.onnx"
    res = _invoke(["model", "dm-small", "-o", str(model), "--activation", "paramramp", "--input-shape", "1,8,8"])
    assert res.exit_code == 0, res.output
    res = _invoke(["train", str(model), "--eps", "0.05", "--epochs", "3", "--eps-start", "1", "--eps-ramp", "1",
                   "-o", str(out)] + QUICK)
    assert res.exit_code == 0, res.output
    assert "ParamRamp r initialised" in res.output and "exported" in res.output
    assert "ibp verified %" in res.output

    # the exported file: ParamRamp custom op, runs in onnxruntime, imports in onnxverify
    m = onnx.load(str(out))
    assert sum(n.op_type == "ParamRamp" and n.domain == "onnxverify" for n in m.graph.node) == 3
    ds = subset(load_digits_dataset(), 256, 100, seed=0)
    x = ds.normalize(ds.x_test[:8])
    net = onnxverify.load(out)
    np.testing.assert_allclose(net.forward(x), OrtModel(m)(x), atol=1e-4)
    etas = [a.f for n in m.graph.node if n.op_type == "ParamRamp" for a in n.attribute if a.name == "eta"]
    assert etas == [pytest.approx(0.0, abs=1e-9)] * 3  # "0.01 -> 0", evaluated at the end value

    # model card and log
    card = json.loads((tmp_path / "trained.card.json").read_text())
    assert card["architecture"] == "dm-small" and card["activation"] == "paramramp"
    assert card["training"]["eps_train"] == 0.05 and card["training"]["epochs"] == 3
    assert card["export_check"]["ok"]
    final = card["final_errors"]["0.05"]
    assert set(final["verified_err"]) == {"ibp", "crown-lbp"}
    assert final["clean_err"] <= final["pgd_err"] <= final["verified_err"]["ibp"] + 1e-12
    log = [json.loads(line) for line in (tmp_path / "trained.train" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    for key in ("loss", "eps", "kappa", "beta", "eta", "train_clean_err", "test_clean_err",
                "test_ibp_verified_err", "time_s"):
        assert key in log[-1], key
    assert (tmp_path / "trained.train" / "checkpoint.pt").is_file()

    # evaluate the shipped file with the CLI: same numbers as the card
    res = _invoke(["evaluate", str(out), "--eps", "0.05", "--n-test", "100", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "e.json").read_text())["results"][0]
    assert ev["n"] == 100 and ev["pgd_err"] is None  # no --pgd
    assert ev["verified_err"]["ibp"] == pytest.approx(final["verified_err"]["ibp"])
    if "crown-lbp" in available_methods():
        assert ev["verified_err"]["crown-lbp"] <= ev["verified_err"]["ibp"]


def test_log_follows_the_schedules(tmp_path):
    """eps / kappa / eta / lr in the per-epoch log are the schedules' values (PAPER_NOTES §4):
    eps 0 during the clean epoch, eps_max from eps_start + eps_ramp on, kappa 1 -> kappa_end,
    eta 0.01 -> 0, lr x gamma from each milestone on."""
    from onnxverify.training.schedules import kappa
    from onnxverify.training.trainer import train

    ds = subset(load_digits_dataset(), 128, 32, seed=0)
    cfg = make_config("digits-quick", epochs=5, eps_train=0.1, eps_start=1, eps_ramp=2, eps_kind="linear",
                      kappa_end=0.25, lr=1e-3, lr_milestones=(3,), lr_gamma=0.5, batch_size=64, progress=False,
                      eval_samples=0, threads=1)
    res = train(build_model("mlp", "leaky", input_shape=(1, 8, 8), hidden=(16,)), cfg, dataset=ds, echo=None)
    h = res.history
    # last batch of epoch e sits at t = e + 1/2 (two batches per epoch)
    assert [r["eps"] for r in h] == pytest.approx([0.0, 0.025, 0.075, 0.1, 0.1])
    assert [r["kappa"] for r in h] == pytest.approx([kappa(r["eps"], 0.1, 0.25) for r in h])
    assert h[-1]["kappa"] == pytest.approx(0.25)
    assert h[0]["eta"] == pytest.approx(0.01) and h[-1]["eta"] == 0.0
    assert [r["lr"] for r in h] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4])
    assert "train_ibp_verified_err" not in h[0] and "train_ibp_verified_err" in h[1]
    assert float(res.net.leakys[0].negative_slope) == 0.0


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    from onnxverify.training.trainer import train

    ds = subset(load_digits_dataset(), 128, 32, seed=0)
    model = build_model("mlp", "paramramp", input_shape=(1, 8, 8), hidden=(16, 16))
    kw = dict(eps_train=0.05, eps_start=1, eps_ramp=1, batch_size=64, progress=False, eval_samples=0, threads=1,
              r_noise=0.01)
    straight = train(model, make_config("digits-quick", epochs=3, **kw), workdir=tmp_path / "a", dataset=ds, echo=None)
    train(model, make_config("digits-quick", epochs=2, **kw), workdir=tmp_path / "b", dataset=ds, echo=None)
    lines = []
    resumed = train(model, make_config("digits-quick", epochs=3, **kw), workdir=tmp_path / "b", resume=True,
                    dataset=ds, echo=lines.append)
    assert any("resuming" in s for s in lines)
    sa, sb = straight.net.module.state_dict(), resumed.net.module.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history])
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 3
    with pytest.raises(FileNotFoundError):
        train(model, make_config("digits-quick", epochs=3, **kw), workdir=tmp_path / "c", resume=True, dataset=ds)


def test_train_from_architecture_name_and_config_file(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('preset = "digits-quick"\nepochs = 1\neps_train = 0.02\neps_start = 0\neps_ramp = 1\n'
                   'reg_lambda = 0.5\ngrad_clip = 10.0\nn_train = 128\nn_test = 32\nthreads = 1\n')
    out = tmp_path / "fast.onnx"
    res = _invoke(["train", "mlp", "--activation", "leaky", "--bn", "--init", "ibp", "--config", str(cfg),
                   "--no-eval", "--no-progress", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fast.train" / "initial.onnx").is_file()
    log = json.loads((tmp_path / "fast.train" / "log.jsonl").read_text().splitlines()[0])
    assert log["loss_reg"] > 0 and "reg_tightness" in log and "reg_relu" in log
    card = json.loads((tmp_path / "fast.card.json").read_text())
    assert card["architecture"] == "mlp" and card["batchnorm"] == "true" and card["init"] == "ibp"
    assert card["final_errors"] == {}


@pytest.mark.parametrize("args, message", [
    (["--data", "mnist:/nonexistent/dir"], "does not exist"),
    (["--data", "imagenet"], "unknown data set spec"),
    (["--preset", "digits-quick", "--lr", "abc"], "abc"),
])
def test_train_cli_errors(tmp_path, args, message):
    model = tmp_path / "m.onnx"
    onnx.save(build_model("mlp", input_shape=(1, 8, 8)), str(model))
    res = CliRunner().invoke(main, ["train", str(model), "-o", str(tmp_path / "o.onnx")] + args)
    assert res.exit_code != 0 and message in res.output


def test_train_cli_shape_mismatch_and_missing_model(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(build_model("mlp", input_shape=(1, 28, 28)), str(model))
    res = CliRunner().invoke(main, ["train", str(model), "--data", "digits", "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "--input-shape 1,8,8" in res.output
    res = CliRunner().invoke(main, ["train", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "not found" in res.output
    res = CliRunner().invoke(main, ["train", "resnet-9000", "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code != 0 and "neither an ONNX file nor an architecture" in res.output
