"""Training on the verifier's own bounds: tied parameters, gradients, losses, regularisers, r init,
and the IBP verified error of training == the verifier's on the exported file."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

import onnxverify  # noqa: E402
from onnxverify import Box, margin_spec  # noqa: E402
from onnxverify.training.data import load_digits_dataset, subset  # noqa: E402
from onnxverify.training.models import build_model  # noqa: E402
from onnxverify.training.tied import TrainableNetwork, available_methods  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small nets: threads only add overhead on a busy machine
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    return subset(load_digits_dataset(), 320, 120, seed=0)


def _net(activation="paramramp", bn=False, arch="dm-small", seed=0):
    return TrainableNetwork(build_model(arch, activation, batchnorm=bn, input_shape=(1, 8, 8), seed=seed))


def _batch(ds, n=32, eps=0.05):
    x = torch.from_numpy(ds.normalize(ds.x_train[:n]))
    y = torch.from_numpy(ds.y_train[:n])
    lo, hi = (torch.from_numpy(a) for a in ds.input_box(x.numpy(), eps))
    return x, y, lo, hi


@pytest.mark.parametrize("activation", ["relu", "leaky", "paramramp"])
@pytest.mark.parametrize("bn", [False, True])
def test_ir_forward_equals_torch(activation, bn, digits):
    """The tied IR computes the torch module's function, in eval mode and in train mode
    (where BatchNorm uses the batch's statistics on both sides)."""
    net = _net(activation, bn)
    net.set_eta(0.1)
    x = torch.from_numpy(digits.normalize(digits.x_train[:16]))
    with torch.no_grad():
        net.eval()
        torch.testing.assert_close(net.ir_forward(x), net(x), atol=1e-5, rtol=1e-5)
        net.train()
        y = net(x)  # records the batch statistics
        torch.testing.assert_close(net.ir_forward(x), y, atol=1e-5, rtol=1e-5)
    assert {n.op for n, _, _ in net.bindings} >= {"Conv", "Linear"}


def test_ir_params_are_the_torch_tensors():
    net = _net("paramramp", bn=True)
    net.eval()
    net.sync()
    node_by_src = {n.source: n for n in net.graph.nodes}
    assert node_by_src["conv1"].params["weight"] is net.module.conv1.weight
    ramp = net.paramramps[0]
    assert node_by_src["act1"].params["r"] is ramp.r
    net.set_eta(0.003)
    net.sync()
    assert node_by_src["act1"].attrs["eta"] == pytest.approx(0.003)


def test_bounds_are_sound(digits):
    """IBP margins from the tied IR bound the margins of sampled points of the box."""
    net = _net("paramramp", bn=True)
    x, y, lo, hi = _batch(digits, 16, eps=0.05)
    net.eval()
    with torch.no_grad():
        lb, _ = net.margin_bounds(lo, hi, y)
        C = torch.from_numpy(margin_spec(y.numpy(), 10)).float()
        for _ in range(20):
            xs = lo + (hi - lo) * torch.rand(lo.shape)
            m = torch.einsum("bkn,bn->bk", C, net(xs))
            assert bool((lb <= m + 1e-5).all())


def _robust_loss(net, x, y, lo, hi, method="ibp", beta=0.0):
    from onnxverify.training.losses import certified_loss

    return certified_loss(net, x, y, lo, hi, eps=0.05, kappa=0.0, method=method, beta=beta).loss


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_gradients_reach_weights_and_r_and_one_step_lowers_the_loss(method, digits):
    if method not in available_methods():
        pytest.skip(f"{method} not available in this onnxverify")
    from onnxverify.training.init import init_paramramp_r_

    torch.manual_seed(0)
    net = _net("paramramp", bn=True)
    x, y, lo, hi = _batch(digits, 48, eps=0.05)
    init_paramramp_r_(net, [x])  # r at mean activations: bounds cross r, so r has gradients
    net.train()
    loss0 = _robust_loss(net, x, y, lo, hi, method, beta=1.0)
    params = dict(net.module.named_parameters())
    grads = torch.autograd.grad(loss0, list(params.values()), allow_unused=True)
    for (name, p), g in zip(params.items(), grads):
        assert g is not None and float(g.abs().sum()) > 0, f"no gradient reaches {name}"
    assert sum(1 for name in params if name.endswith(".r")) == 3
    with torch.no_grad():
        for p, g in zip(params.values(), grads):
            p -= 1e-3 * g / (g.norm() + 1e-12)
    loss1 = _robust_loss(net, x, y, lo, hi, method, beta=1.0)
    assert float(loss1.detach()) < float(loss0.detach())


def test_crown_ibp_bound_is_sound_and_at_least_ibp_with_tight(digits):
    if "crown-ibp" not in available_methods():
        pytest.skip("crown-ibp not available in this onnxverify")
    net = _net("paramramp", bn=False)
    x, y, lo, hi = _batch(digits, 16, eps=0.02)
    net.eval()
    with torch.no_grad():
        ibp, _ = net.margin_bounds(lo, hi, y, "ibp")
        crown, _ = net.margin_bounds(lo, hi, y, "crown-ibp", strategy="tight")
        assert bool((crown >= ibp - 1e-4).all())  # Theorem 2
        C = torch.from_numpy(margin_spec(y.numpy(), 10)).float()
        for _ in range(10):
            xs = lo + (hi - lo) * torch.rand(lo.shape)
            assert bool((crown <= torch.einsum("bkn,bn->bk", C, net(xs)) + 1e-4).all())


def test_margin_logits_match_margin_spec():
    from onnxverify.training.losses import margin_logits, robust_ce

    y = torch.tensor([0, 3, 9])
    lb = torch.arange(27, dtype=torch.float32).reshape(3, 9)
    z = margin_logits(lb, y)
    C = margin_spec(y.numpy(), 10)
    for b in range(3):
        assert z[b, y[b]] == 0
        for k in range(9):
            j = int(np.nonzero(C[b, k] < 0)[0][0])
            assert z[b, j] == -lb[b, k]
    want = torch.nn.functional.cross_entropy(z, y)
    assert float(robust_ce(lb, y)) == pytest.approx(float(want))


def test_regulariser_values():
    from onnxverify.training.regularisers import tightness_and_balance

    d0 = torch.tensor(0.1)
    # radius equal to the input's: no tightness penalty; symmetric centres: balanced
    c = torch.tensor([[-1.0, 1.0, -2.0, 2.0]])
    t, b = tightness_and_balance(c - 0.1, c + 0.1, d0, 0.5)
    assert float(t) == pytest.approx(0.0) and float(b) == pytest.approx(0.0)
    # radius 4 x D0: relu(0.5 - 0.25) / 0.5 = 0.5; everything inactive: both ratios 0 -> (0.5 + 0.5)/0.5
    t, b = tightness_and_balance(-c.abs() - 1 - 0.4, -c.abs() - 1 + 0.4, d0, 0.5)
    assert float(t) == pytest.approx(0.5) and float(b) == pytest.approx(2.0)


def test_paramramp_r_init_and_noise(digits):
    from onnxverify.training.init import init_paramramp_r_, paramramp_linear_mode_, r_noise
    from onnxverify.training.tied import R_LARGE

    net = _net("paramramp")
    paramramp_linear_mode_(net)
    assert all(float(m.r.detach().min()) == R_LARGE for m in net.paramramps)
    x = torch.from_numpy(digits.normalize(digits.x_train[:64]))
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: outs.__setitem__(k, o)) for k, m in enumerate(net.paramramps)]
    with torch.no_grad():
        net.eval()
        net(x)
    for h in hooks:
        h.remove()
    init_paramramp_r_(net, [x[:40], x[40:]], floor=1e-4)
    for k, m in enumerate(net.paramramps):
        torch.testing.assert_close(m.r, outs[k].mean(0).clamp_min(1e-4), atol=1e-6, rtol=1e-5)
    before = [m.r.detach().clone() for m in net.paramramps]
    with r_noise(net, 0.5, torch.Generator().manual_seed(0)):
        assert any(not torch.equal(m.r, b) for m, b in zip(net.paramramps, before))
    assert all(torch.equal(m.r, b) for m, b in zip(net.paramramps, before))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A briefly trained ParamRamp+BN net (fast-recipe style) exported to ONNX."""
    from onnxverify.training.config import make_config
    from onnxverify.training.trainer import train

    model = build_model("dm-small", "paramramp", batchnorm=True, init="ibp", input_shape=(1, 8, 8), seed=0)
    cfg = make_config("digits-quick", epochs=4, eps_train=0.05, eps_start=1, eps_ramp=2, kappa_end=0.5,
                      batch_size=64, reg_lambda=0.5, grad_clip=10.0, progress=False, eval_samples=0, seed=0)
    out = tmp_path_factory.mktemp("trained") / "net.onnx"
    res = train(model, cfg, output=None, echo=None, dataset=digits)
    from onnxverify.training.export import export_trained

    _, report = export_trained(res.net, out, check_inputs=digits.normalize(digits.x_test[:32]))
    return res, out, report


def test_ibp_verified_error_in_training_equals_the_verifiers(trained, digits):
    from onnxverify.training.evaluate import evaluate_onnx, evaluate_tied

    res, path, report = trained
    assert report["ok"] and report["max_abs_err_ort_vs_torch"] < 1e-4
    net = onnxverify.load(path)
    assert "ParamRamp" in net.graph.op_counts()
    mixed = 0
    for eps in (0.005, 0.02, 0.05):
        ours = evaluate_tied(res.net, digits, eps)
        theirs = evaluate_onnx(path, digits, eps, methods=["ibp"], pgd=False)
        # sample by sample, against the verifier on the file; only a margin bound within float
        # rounding of 0 (BN folded by the exporter, numpy vs torch) may flip
        x = digits.normalize(digits.x_test)
        lo, hi = digits.input_box(x, eps)
        b = net.bounds(Box(lo, hi), method="ibp", spec=margin_spec(digits.y_test, 10))
        np.testing.assert_allclose(b.lower.min(axis=1), ours["margin_min"], atol=1e-4, rtol=1e-4)
        clear = np.abs(ours["margin_min"]) > 1e-4
        np.testing.assert_array_equal(ours["verified"][clear], (b.lower > 0).all(axis=1)[clear])
        assert abs(ours["ibp_err"] - theirs["verified_err"]["ibp"]) <= (~clear).mean() + 1e-12
        if clear.all():
            assert ours["ibp_err"] == theirs["verified_err"]["ibp"]
        mixed += 0 < ours["ibp_err"] < 1
    assert mixed >= 1  # the comparison is not vacuous


def test_verified_examples_resist_pgd(trained, digits):
    """Soundness across tools: nothing IBP/CROWN-LBP verifies is broken by PGD (replayed in onnxruntime)."""
    from onnxverify.training.evaluate import evaluate_onnx

    _, path, _ = trained
    ev = evaluate_onnx(path, digits, 0.02, methods=["ibp", "crown-lbp"], pgd=True, pgd_steps=20, pgd_restarts=2)
    assert ev["clean_err"] <= ev["pgd_err"]
    for m, err in ev["verified_err"].items():
        if err is not None:
            assert ev["pgd_err"] <= err + 1e-12, m
    if "crown-lbp" in available_methods():
        assert ev["verified_err"]["crown-lbp"] <= ev["verified_err"]["ibp"] + 1e-12  # tight strategy, Theorem 2
    else:
        assert ev["verified_err"]["crown-lbp"] is None and "crown-lbp" in ev["unavailable"]


def test_pgd_attack_breaks_a_fragile_classifier():
    from onnxverify.training.evaluate import pgd_attack

    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        lin.bias.zero_()
    x = torch.tensor([[0.6, 0.5], [0.9, 0.1]])  # margins 0.1 and 0.8 (class 0 correct)
    y = torch.tensor([0, 0])
    eps = 0.1
    broken, x_adv = pgd_attack(lin, x, y, x - eps, x + eps, steps=20, restarts=2)
    assert broken.tolist() == [True, False]
    assert lin(x_adv[:1]).argmax(1).item() == 1 and bool(((x_adv - x).abs() <= eps + 1e-6).all())


def test_normalised_three_channel_data_train_and_verify_agree(tmp_path):
    """CIFAR-style data (3 channels, per-channel mean/std, eps divided by std, box clamped to the
    normalised [0, 1]): training-side and file-side IBP agree sample by sample."""
    from onnxverify.training.config import make_config
    from onnxverify.training.data import Dataset
    from onnxverify.training.evaluate import evaluate_onnx, evaluate_tied
    from onnxverify.training.export import export_trained
    from onnxverify.training.trainer import train

    rng = np.random.default_rng(0)
    proto = rng.uniform(0, 1, (4, 3, 8, 8))
    ytr, yte = rng.integers(0, 4, 160), rng.integers(0, 4, 60)
    xtr = np.clip(proto[ytr] + rng.normal(0, 0.1, (160, 3, 8, 8)), 0, 1)
    xte = np.clip(proto[yte] + rng.normal(0, 0.1, (60, 3, 8, 8)), 0, 1)
    xte[:5] = 1.0  # saturated pixels: the box must be clamped at the normalised 1
    ds = Dataset(xtr, ytr, xte, yte, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), name="toy", augment=True)
    model = build_model("dm-small", "leaky", batchnorm=True, input_shape=(3, 8, 8), num_classes=4)
    cfg = make_config("digits-quick", epochs=2, eps_train=0.02, eps_start=0, eps_ramp=1, batch_size=40,
                      progress=False, eval_samples=0)
    res = train(model, cfg, dataset=ds, echo=None)
    path = tmp_path / "toy.onnx"
    export_trained(res.net, path)
    lo, hi = ds.input_box(ds.normalize(xte), 0.02)
    assert np.all(hi[:5] <= ds.normalize(np.ones((1, 3, 8, 8)))[0] + 1e-6)
    for eps in (0.002, 0.02):
        ours = evaluate_tied(res.net, ds, eps)
        theirs = evaluate_onnx(path, ds, eps, methods=["ibp"], pgd=False)
        borderline = (np.abs(ours["margin_min"]) <= 1e-4).mean()
        assert abs(ours["ibp_err"] - theirs["verified_err"]["ibp"]) <= borderline + 1e-12
        assert ours["clean_err"] == theirs["clean_err"]
