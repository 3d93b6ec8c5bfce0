"""Beyond the paper: MTL-IBP and SABR losses, raw-pixel exports (normalisation folded into the
ONNX), VNN-LIB benchmarks written from a trained model, the evaluation's skipping of decided
images, neuron statuses in the log, and data-parallel training on 2 CPU processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

import onnxverify  # noqa: E402
from onnxverify import Box, margin_spec  # noqa: E402
from onnxverify.onnx.reference import OrtModel  # noqa: E402
from onnxverify.training.config import make_config  # noqa: E402
from onnxverify.training.data import Dataset, load_digits_dataset, subset  # noqa: E402
from onnxverify.training.models import build_model  # noqa: E402
from onnxverify.training.tied import TrainableNetwork  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    return subset(load_digits_dataset(), 320, 120, seed=0)


def _batch(ds, n=32, eps=0.05):
    x = torch.from_numpy(ds.normalize(ds.x_train[:n]))
    y = torch.from_numpy(ds.y_train[:n])
    lo, hi = (torch.from_numpy(a) for a in ds.input_box(x.numpy(), eps))
    return x, y, lo, hi


# ---- MTL-IBP and SABR ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mtl-ibp", "sabr"])
def test_mtl_ibp_and_sabr_gradients_reach_weights_and_r(method, digits):
    from onnxverify.training.init import init_paramramp_r_
    from onnxverify.training.losses import certified_loss

    torch.manual_seed(0)
    net = TrainableNetwork(build_model("dm-small", "paramramp", batchnorm=True, input_shape=(1, 8, 8), seed=0))
    x, y, lo, hi = _batch(digits, 48, eps=0.1)
    init_paramramp_r_(net, [x])
    net.train()

    def loss():
        return certified_loss(net, x, y, lo, hi, eps=0.1, kappa=0.0, method=method, mtl_alpha=0.5,
                              sabr_lambda=0.5, adv_steps=3, generator=torch.Generator().manual_seed(3))

    terms = loss()
    assert terms.robust is not None and terms.margin_lower.shape == (48, 9)
    if method == "mtl-ibp":  # the robust term is the convex combination of its two parts
        assert float(terms.robust.detach()) == pytest.approx(0.5 * terms.info["loss_ibp"] + 0.5 * terms.info["loss_adv"],
                                                    rel=1e-5)
    params = dict(net.module.named_parameters())
    grads = torch.autograd.grad(terms.loss, list(params.values()), allow_unused=True)
    for (name, p), g in zip(params.items(), grads):
        assert g is not None and float(g.abs().sum()) > 0, f"no gradient reaches {name}"
    assert sum(1 for name in params if name.endswith(".r")) == 3
    with torch.no_grad():
        for p, g in zip(params.values(), grads):
            p -= 1e-3 * g / (g.norm() + 1e-12)
    assert float(loss().loss.detach()) < float(terms.loss.detach())  # same PGD starts: one small step downhill


def test_sabr_box_lies_inside_the_eps_ball_and_lambda_one_is_ibp(digits):
    from onnxverify.training.losses import certified_loss, sabr_box

    x, y, lo, hi = _batch(digits, 64, eps=0.2)  # many pixels clipped at 0 and 1
    rad = torch.tensor(0.2 * 0.3)
    seen = []

    def centre(a, b):
        seen.append((a, b))
        return a + (b - a) * torch.rand(a.shape, generator=torch.Generator().manual_seed(1))

    s_lo, s_hi, c = sabr_box(lo, hi, rad, centre)
    assert bool((s_lo >= lo).all()) and bool((s_hi <= hi).all()) and bool((s_lo <= s_hi).all())
    assert float((s_hi - s_lo).max()) <= 2 * float(rad) + 1e-6
    assert bool((c >= s_lo).all()) and bool((c <= s_hi).all())
    # where the ball is not clipped, the small box has the full width 2 * radius
    free = ((hi - lo) >= 2 * float(rad) + 1e-6)
    assert torch.allclose((s_hi - s_lo)[free], torch.full_like(s_lo[free], 2 * float(rad)), atol=1e-6)
    # the PGD point is searched in the shrunk box only
    a, b = seen[0]
    assert bool((a >= lo).all()) and bool((b <= hi).all())
    # lambda = 1 propagates the whole box: SABR's bound equals IBP's
    net = TrainableNetwork(build_model("dm-small", "relu", input_shape=(1, 8, 8), seed=1))
    net.eval()
    with torch.no_grad():
        ibp = certified_loss(net, x, y, lo, hi, eps=0.2, kappa=0.0, method="ibp")
        sab = certified_loss(net, x, y, lo, hi, eps=0.2, kappa=0.0, method="sabr", sabr_lambda=1.0, adv_steps=2)
    torch.testing.assert_close(sab.margin_lower, ibp.margin_lower, atol=1e-5, rtol=1e-5)


def test_mtl_ibp_and_sabr_train_and_log(tmp_path, digits):
    from onnxverify.training.trainer import train

    for method in ("mtl-ibp", "sabr"):
        cfg = make_config("digits-quick", epochs=2, eps_train=0.05, eps_start=0, eps_ramp=1, method=method,
                          adv_steps=2, batch_size=80, progress=False, eval_samples=40, threads=1)
        res = train(build_model("mlp", "paramramp", input_shape=(1, 8, 8), hidden=(16,)), cfg, dataset=digits,
                    echo=None)
        last = res.history[-1]
        assert np.isfinite(last["loss"]) and "loss_robust" in last
        if method == "mtl-ibp":
            assert "loss_adv" in last and "train_ibp_verified_err" in last
        else:
            assert "train_verified_err" in last  # over the small boxes: not a verified error of the ball


# ---- raw-pixel exports -----------------------------------------------------------------------
def _toy_dataset():
    rng = np.random.default_rng(0)
    proto = rng.uniform(0, 1, (4, 3, 8, 8))
    ytr, yte = rng.integers(0, 4, 160), rng.integers(0, 4, 60)
    xtr = np.clip(proto[ytr] + rng.normal(0, 0.1, (160, 3, 8, 8)), 0, 1)
    xte = np.clip(proto[yte] + rng.normal(0, 0.1, (60, 3, 8, 8)), 0, 1)
    xte[:5] = 1.0
    return Dataset(xtr, ytr, xte, yte, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), name="toy")


def test_folded_normalisation_same_outputs_and_same_ibp_verified_error(tmp_path):
    from onnxverify.training.evaluate import evaluate_onnx, evaluate_tied
    from onnxverify.training.export import export_trained
    from onnxverify.training.trainer import train

    ds = _toy_dataset()
    cfg = make_config("digits-quick", epochs=2, eps_train=0.02, eps_start=0, eps_ramp=1, batch_size=40,
                      progress=False, eval_samples=0)
    res = train(build_model("dm-small", "paramramp", input_shape=(3, 8, 8), num_classes=4), cfg, dataset=ds,
                echo=None)
    raw_path, norm_path = tmp_path / "raw.onnx", tmp_path / "norm.onnx"
    _, rep = export_trained(res.net, raw_path, normalization=(ds.mean, ds.std))
    export_trained(res.net, norm_path)
    assert rep["input_space"] == "raw"
    raw, norm = OrtModel(onnxverify.load(raw_path).model), OrtModel(onnxverify.load(norm_path).model)
    ops = [n.op_type for n in onnxverify.load(raw_path).model.graph.node]
    assert ops[:2] == ["Sub", "Div"]
    x_raw = ds.x_test[:16]
    np.testing.assert_allclose(raw(x_raw), norm(ds.normalize(x_raw)), atol=1e-5, rtol=1e-5)
    meta = {p.key: p.value for p in onnxverify.load(raw_path).model.metadata_props}
    assert meta["onnxverify.input_space"] == "raw" and json.loads(meta["onnxverify.input_std"]) == pytest.approx(
        [0.2, 0.25, 0.3])
    for eps in (0.002, 0.02):
        ours = evaluate_tied(res.net, ds, eps)
        on_raw = evaluate_onnx(raw_path, ds, eps, methods=["ibp"], pgd=False)
        on_norm = evaluate_onnx(norm_path, ds, eps, methods=["ibp"], pgd=False)
        assert on_raw["input_space"] == "raw" and on_norm["input_space"] == "normalized"
        borderline = (np.abs(ours["margin_min"]) <= 1e-4).mean()
        assert abs(ours["ibp_err"] - on_raw["verified_err"]["ibp"]) <= borderline + 1e-12
        assert on_raw["clean_err"] == ours["clean_err"] == on_norm["clean_err"]
    # the verifier on the raw file, by hand: box [x - eps, x + eps] clamped to [0, 1] in pixels
    net = onnxverify.load(raw_path)
    lo, hi = np.clip(x_raw - 0.02, 0, 1), np.clip(x_raw + 0.02, 0, 1)
    b = net.bounds(Box(lo, hi), method="ibp", spec=margin_spec(ds.y_test[:16], 4))
    x_n = ds.normalize(x_raw)
    nlo, nhi = ds.input_box(x_n, 0.02)
    b2 = onnxverify.load(norm_path).bounds(Box(nlo, nhi), method="ibp", spec=margin_spec(ds.y_test[:16], 4))
    np.testing.assert_allclose(b.lower, b2.lower, atol=1e-4, rtol=1e-4)


# ---- VNN-LIB benchmark from a trained model --------------------------------------------------
def test_write_vnnlib_instances_parse_and_run_decides_them(tmp_path, digits):
    from click.testing import CliRunner

    from onnxverify.cli import main
    from onnxverify.specs.vnnlib import parse_vnnlib
    from onnxverify.training.export import export_trained
    from onnxverify.training.trainer import train
    from onnxverify.vnncomp.instances import read_instances

    cfg = make_config("digits-quick", epochs=3, eps_train=0.05, eps_start=0, eps_ramp=1, batch_size=64,
                      progress=False, eval_samples=0, threads=1)
    res = train(build_model("mlp", "relu", input_shape=(1, 8, 8), hidden=(32,)), cfg, dataset=digits, echo=None)
    model = tmp_path / "m.onnx"
    export_trained(res.net, model, normalization=(digits.mean, digits.std))
    out = tmp_path / "bench"
    r = CliRunner().invoke(main, ["evaluate", str(model), "--data", "digits", "--eps", "0.01,0.3", "--n-test", "4",
                                  "--write-vnnlib", str(out), "--timeout", "20"])
    assert r.exit_code == 0, r.output
    inst = read_instances(out / "instances.csv")
    assert len(inst) == 8 and all(i.timeout == 20 for i in inst)
    full = load_digits_dataset()  # what the CLI's --data digits loads
    props = [line.split(",") for line in (out / "properties.csv").read_text().splitlines()[1:]]
    for i, (fname, idx, label, eps) in zip(inst, props):
        assert Path(i.vnnlib_path).name == fname
        prop = parse_vnnlib(i.vnnlib_path, n_inputs=64, n_outputs=10)
        (case,) = prop.cases
        x0 = full.x_test[int(idx)].reshape(-1)
        np.testing.assert_allclose(case.x_lower, np.clip(x0 - float(eps), 0, 1), atol=1e-6)
        np.testing.assert_allclose(case.x_upper, np.clip(x0 + float(eps), 0, 1), atol=1e-6)
        assert len(case.y_disjuncts) == 9  # some j != label with Y_j >= Y_label
        y = np.zeros(10)
        y[int(label)] = 1.0
        A, b = case.y_disjuncts[0]
        assert not np.all(A @ y <= b)  # the label winning is safe
    r = CliRunner().invoke(main, ["run", str(out / "instances.csv"), "--out", str(tmp_path / "res"), "--no-progress"])
    assert r.exit_code == 0, r.output
    verdicts = [p.read_text().split()[0] for p in sorted((tmp_path / "res" / "results").glob("*.txt"))]
    assert len(verdicts) == 8 and set(verdicts) <= {"sat", "unsat", "unknown", "timeout"}
    assert "unsat" in verdicts[:4]  # eps 0.01: robust images are proved
    assert "sat" in verdicts[4:]  # eps 0.3: counterexamples (replayed by the runner)


# ---- evaluation: skipping decided images changes no number -----------------------------------
def test_skipping_decided_images_gives_the_same_errors(tmp_path, digits):
    from onnxverify.training.evaluate import estimate_evaluation, evaluate_onnx, format_estimate
    from onnxverify.training.export import export_trained
    from onnxverify.training.trainer import train

    cfg = make_config("digits-quick", epochs=3, eps_train=0.03, eps_start=0, eps_ramp=1, batch_size=64,
                      progress=False, eval_samples=0, threads=1)
    res = train(build_model("dm-small", "relu", input_shape=(1, 8, 8)), cfg, dataset=digits, echo=None)
    path = tmp_path / "m.onnx"
    export_trained(res.net, path, normalization=(digits.mean, digits.std))
    kw = dict(methods=["ibp", "crown-lbp"], pgd=True, pgd_steps=10, pgd_restarts=1, n_test=60)
    fast = evaluate_onnx(path, digits, 0.03, **kw)
    full = evaluate_onnx(path, digits, 0.03, skip_decided=False, **kw)
    assert 0 < fast["verified_err"]["ibp"] < 1  # not vacuous
    assert fast["clean_err"] == full["clean_err"]
    assert fast["verified_err"] == full["verified_err"]
    assert fast["ran"]["crown-lbp"] < full["ran"]["crown-lbp"] == 60
    assert full["pgd_err"] <= min(full["verified_err"].values())  # soundness, every image attacked
    assert abs(fast["pgd_err"] - full["pgd_err"]) <= 2 / 60  # PGD is random: same starts, other subsets
    sample = evaluate_onnx(path, digits, 0.03, method_samples={"crown-lbp": 20}, **kw)
    assert sample["n_by_method"]["crown-lbp"] == 20 and sample["n_by_method"]["ibp"] == 60
    est = estimate_evaluation(path, digits, [0.01, 0.03], ["ibp", "crown-lbp"], True, 10, 1, n_test=60)
    labels = [p[0] for p in est["phases"]]
    assert labels[0].startswith("clean") and labels[1].startswith("ibp") and labels[2].startswith("PGD")
    assert labels[3].startswith("crown-lbp") and est["total_s"] > 0
    assert "worst case" in format_estimate(est)


def test_evaluate_refuses_a_model_for_other_images(tmp_path):
    from onnxverify.training.evaluate import evaluate_onnx

    path = tmp_path / "m.onnx"
    import onnx

    onnx.save(build_model("dm-small", "relu", input_shape=(1, 28, 28)), str(path))
    with pytest.raises(ValueError, match=r"\(1, 28, 28\).*\(1, 8, 8\).*--input-shape 1,8,8"):
        evaluate_onnx(path, load_digits_dataset(), 0.1, methods=["ibp"], pgd=False)


# ---- neuron statuses ------------------------------------------------------------------------
def test_status_fractions_match_the_verifiers_classification(digits):
    from onnxverify.bounds.status import PARAMRAMP_STATUSES, RELU_STATUSES
    from onnxverify.training.monitor import evaluate_tied

    for act, names in (("relu", RELU_STATUSES), ("paramramp", PARAMRAMP_STATUSES)):
        net = TrainableNetwork(build_model("dm-small", act, input_shape=(1, 8, 8), r_init=0.5))
        ev = evaluate_tied(net, digits, 0.05, n_test=30, statuses=True, pgd_steps=3)
        assert len(ev["status"]) == 3 and 0 <= ev["pgd_err"] <= 1
        for fr in ev["status"].values():
            assert set(fr) == set(names) and sum(fr.values()) == pytest.approx(1.0)


# ---- data-parallel training ------------------------------------------------------------------
def _distributed_ok():
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


@pytest.mark.skipif(not _distributed_ok(), reason="torch.distributed with gloo unavailable")
def test_two_process_data_parallel_run_matches_one_process(tmp_path):
    """``onnxverify train --nproc 2`` (torchrun, gloo, 2 CPU processes) follows the loss
    trajectory of a 1-process run: each step's gradient is the whole batch's."""
    import onnx

    model = tmp_path / "m.onnx"
    onnx.save(build_model("mlp", "paramramp", input_shape=(1, 8, 8), hidden=(24,)), str(model))
    common = ["train", str(model), "--data", "digits", "--n-train", "256", "--n-test", "40", "--eps", "0.05",
              "--epochs", "2", "--eps-start", "1", "--eps-ramp", "1", "--batch-size", "64", "--threads", "1",
              "--eval-samples", "40", "--no-eval", "--no-progress", "--kappa-end", "0.5"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    code = "from onnxverify.cli import main; main()"
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"p{nproc}.onnx"
        cmd = [sys.executable, "-c", code] + common + ["-o", str(out)] + (["--nproc", "2"] if nproc == 2 else [])
        r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs[nproc] = [json.loads(x) for x in (tmp_path / f"p{nproc}.train" / "log.jsonl").read_text().splitlines()]
        assert (tmp_path / f"p{nproc}.onnx").is_file()
    one, two = runs[1], runs[2]
    assert [r["epoch"] for r in two] == [1, 2] and two[0].get("processes") == 2
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4)
        assert b["train_clean_err"] == pytest.approx(a["train_clean_err"], abs=1e-9)
        assert b["test_ibp_verified_err"] == pytest.approx(a["test_ibp_verified_err"], abs=1 / 40 + 1e-9)
