"""Tests for onnxverify.training.schedules (eps / kappa / beta / eta / lr schedules, presets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxverify.training import schedules as S
from onnxverify.training.schedules import (
    PRESETS,
    EpsSchedule,
    EtaSchedule,
    LrSchedule,
    beta_schedule,
    kappa,
)


def test_module_does_not_import_torch():
    for name in ("schedules.py", "ramps.py"):  # schedules.py re-exports the ramps
        src = (Path(S.__file__).parent / name).read_text()
        assert "import torch" not in src and "from torch" not in src, name


def test_epoch_position():
    assert S.epoch_position(3, 0, 10) == 3.0
    assert S.epoch_position(3, 5, 10) == 3.5
    with pytest.raises(ValueError):
        S.epoch_position(0, 0, 0)


# --------------------------------------------------------------------------------------
# eps
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "smoothed"])
def test_eps_before_start_and_after_ramp(kind):
    s = EpsSchedule(0.4, start_epoch=10, ramp_epochs=50, kind=kind)
    for t in (0, 5, 9, 9.999, 10):
        assert s.value(t) == 0.0
    for t in (60, 60.0, 61.5, 130, 199.99, 1e6):
        assert s.value(t) == 0.4  # exactly eps_max
    assert s(60) == 0.4 and s.end_epoch == 60
    assert s.in_ramp(10) and s.in_ramp(59.9) and not s.in_ramp(60) and not s.in_ramp(9.9)


def test_eps_linear_values():
    s = EpsSchedule(0.4, 10, 50, "linear")
    assert s.value(35) == pytest.approx(0.2)  # midpoint
    assert s.value(20) == pytest.approx(0.4 * 10 / 50)
    assert s.value(10 + 50 * 0.3) == pytest.approx(0.12)


def test_smoothed_formula_and_constants():
    # g(s) = (256/13) s^4 up to s = 1/4, then (16 s - 3) / 13
    for frac in np.linspace(0, 0.25, 11):
        assert S.smoothed_fraction(frac) == pytest.approx(256 / 13 * frac ** 4)
    for frac in np.linspace(0.25, 1, 13):
        assert S.smoothed_fraction(frac) == pytest.approx((16 * frac - 3) / 13)
    assert S.smoothed_fraction(0.25) == pytest.approx(1 / 13)
    assert S.smoothed_fraction(1.0) == 1.0
    assert S.smoothed_fraction(0.0) == 0.0
    # clamped outside [0, 1]
    assert S.smoothed_fraction(-1) == 0.0 and S.smoothed_fraction(2) == 1.0


def test_smoothed_monotone_continuous_below_linear():
    lin = EpsSchedule(1.0, 2, 8, "linear")
    smo = EpsSchedule(1.0, 2, 8, "smoothed")
    ts = np.linspace(0, 12, 4801)
    vals = np.array([smo(t) for t in ts])
    lins = np.array([lin(t) for t in ts])
    assert np.all(np.diff(vals) >= -1e-15)  # monotone
    # continuous: no jump larger than the steepest slope (16/13 per ramp) allows
    step = ts[1] - ts[0]
    assert np.max(np.abs(np.diff(vals))) <= (16 / 13) / 8 * step * 1.0001
    assert np.all(vals <= lins + 1e-12)  # never above the linear ramp
    early = (ts > 2) & (ts < 2 + 8 * 0.5)
    assert np.all(vals[early] < lins[early])  # strictly below early in the ramp
    # C1 at the joint s = 1/4: left and right slopes agree
    h = 1e-6
    joint = 2 + 8 * 0.25
    left = (smo(joint) - smo(joint - h)) / h
    right = (smo(joint + h) - smo(joint)) / h
    assert left == pytest.approx(right, rel=1e-4)
    assert right == pytest.approx((16 / 13) / 8, rel=1e-4)
    assert smo(10) == 1.0


def test_eps_zero_length_ramp_and_zero_eps():
    s = EpsSchedule(0.3, start_epoch=2, ramp_epochs=0)
    assert s(1.99) == 0.0 and s(2) == 0.3 and s(5) == 0.3
    assert EpsSchedule(0.0, 0, 5)(3) == 0.0


def test_eps_schedule_validation():
    with pytest.raises(ValueError):
        EpsSchedule(0.1, 0, 5, kind="cosine")
    with pytest.raises(ValueError):
        EpsSchedule(-0.1, 0, 5)
    with pytest.raises(ValueError):
        EpsSchedule(0.1, -1, 5)


# --------------------------------------------------------------------------------------
# kappa / beta
# --------------------------------------------------------------------------------------


def test_kappa_values():
    assert kappa(0.0, 0.4, 0.0) == 1.0
    assert kappa(0.4, 0.4, 0.0) == pytest.approx(0.0)
    assert kappa(0.4, 0.4, 0.5) == pytest.approx(0.5)
    assert kappa(0.2, 0.4, 0.0) == pytest.approx(0.5)
    assert kappa(0.1, 0.4, 0.5) == pytest.approx((0.4 - 0.1 * 0.5) / 0.4)
    assert kappa(0.0, 0.0, 0.0) == 1.0  # eps_max = 0
    assert kappa(0.3, 0.0, 0.2) == 1.0
    assert kappa(1.0, 0.4, 0.0) == pytest.approx(0.0)  # clamped past eps_max


def test_beta_same_formula():
    for e in (0.0, 0.1, 0.25, 0.4):
        assert beta_schedule(e, 0.4, 0.0) == kappa(e, 0.4, 0.0)
    assert beta_schedule(0.4, 0.4, 1.0) == 1.0


def test_kappa_along_schedule():
    p = PRESETS["mnist-paper"]
    assert p.kappa_at(0) == 1.0 and p.kappa_at(9.5) == 1.0
    assert p.kappa_at(35) == pytest.approx(0.5)
    assert p.kappa_at(60) == pytest.approx(p.kappa_end)
    assert p.beta_at(0) == 1.0 and p.beta_at(100) == pytest.approx(p.beta_end)


# --------------------------------------------------------------------------------------
# eta
# --------------------------------------------------------------------------------------


def test_eta_schedule_001_to_0():
    s = EtaSchedule(0.01, 0.0, start_epoch=10, ramp_epochs=50)
    assert s.kind == "smoothed"
    for t in (0, 5, 10):
        assert s(t) == 0.01
    for t in (60, 100, 200):
        assert s(t) == 0.0
    vals = [s(t) for t in np.linspace(10, 60, 501)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # non-increasing
    assert s(35) == pytest.approx(0.01 * (1 - S.smoothed_fraction(0.5)))
    lin = EtaSchedule(0.01, 0.0, 10, 50, kind="linear")
    assert lin(35) == pytest.approx(0.005)
    assert EtaSchedule.constant(0.1)(50) == 0.1


# --------------------------------------------------------------------------------------
# lr
# --------------------------------------------------------------------------------------


def test_lr_milestones_mnist():
    lr = PRESETS["mnist-paper"].lr_schedule()
    assert lr(0) == pytest.approx(5e-4)
    assert lr(129) == pytest.approx(5e-4)
    assert lr(129.99) == pytest.approx(5e-4)
    assert lr(130) == pytest.approx(5e-5)
    assert lr(189) == pytest.approx(5e-5)
    assert lr(190) == pytest.approx(5e-6)
    assert lr(199) == pytest.approx(5e-6)


def test_lr_schedule_generic():
    lr = LrSchedule(1.0, milestones=(20, 10), gamma=0.5)  # unsorted milestones are sorted
    assert lr.milestones == (10.0, 20.0)
    assert [lr(t) for t in (0, 9.9, 10, 19, 20, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert LrSchedule(0.1)(1000) == 0.1


# --------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------


def test_preset_names():
    for name in ("mnist-paper", "cifar-paper", "fast-cifar", "fast-mnist", "digits-quick"):
        assert name in PRESETS
        assert PRESETS[name].name == name


def test_mnist_paper_preset():
    p = PRESETS["mnist-paper"]
    assert p.dataset == "mnist" and p.model == "dm-large"
    assert p.eps_train == 0.4 and set(p.eps_test) == {0.2, 0.3, 0.4}
    assert p.batch_size == 256 and p.optimizer == "adam" and p.lr == 5e-4
    assert p.epochs == 200 and p.lr_milestones == (130, 190) and p.lr_gamma == 0.1
    assert p.eps_start == 10 and p.eps_ramp == 50
    eps = p.eps_schedule()
    assert eps(9.99) == 0.0 and eps(10) == 0.0 and eps(10.5) > 0 and eps(60) == 0.4
    assert p.eta_start == 0.01 and p.eta_end == 0.0


def test_cifar_paper_presets():
    p = PRESETS["cifar-paper"]
    assert p.dataset == "cifar10"
    assert p.eps_train == pytest.approx(8.8 / 255) and p.eps_test == pytest.approx((8 / 255,))
    assert p.batch_size == 1024 and p.epochs == 3200
    assert p.kappa_end == 0.0 and p.augment
    v = PRESETS["cifar-paper-2.2"]
    assert v.eps_train == pytest.approx(2.2 / 255) and v.eps_test == pytest.approx((2 / 255,))
    assert v.batch_size == 1024 and v.epochs == 3200
    assert 0 < p.eps_start < p.eps_start + p.eps_ramp < p.epochs
    assert all(p.eps_start + p.eps_ramp <= m < p.epochs for m in p.lr_milestones)


def test_fast_cifar_preset():
    p = PRESETS["fast-cifar"]
    assert p.epochs == 160 and p.eps_start == 1 and p.eps_ramp == 80
    assert p.clean_epochs == 1 and p.full_eps_epochs == 79
    assert p.optimizer == "adam" and p.lr == 5e-4
    assert p.lr_milestones == (120, 140) and p.lr_gamma == 0.2
    assert p.grad_clip == 10 and p.reg_lambda == 0.5 and p.reg_tau == 0.5
    assert p.init == "ibp" and p.batchnorm and p.model == "cnn7-bn"
    assert p.eps_train == pytest.approx(8 / 255)
    lr = p.lr_schedule()
    assert lr(119) == pytest.approx(5e-4) and lr(120) == pytest.approx(1e-4)
    assert lr(140) == pytest.approx(2e-5)
    eps = p.eps_schedule()
    assert eps(0.99) == 0.0 and eps(81) == p.eps_train and eps(40) < p.eps_train


def test_fast_mnist_preset():
    p = PRESETS["fast-mnist"]
    assert p.dataset == "mnist" and p.eps_train == 0.4
    assert p.epochs == 70 and p.eps_start == 1 and p.eps_ramp == 20
    assert p.lr_milestones == (50, 60) and p.lr_gamma == 0.2
    assert p.grad_clip == 10 and p.reg_lambda == 0.5 and p.init == "ibp"
    assert p.eps_start + p.eps_ramp < min(p.lr_milestones)


def test_digits_quick_preset():
    p = PRESETS["digits-quick"]
    assert p.dataset == "digits" and p.epochs <= 10
    assert p.eps_start + p.eps_ramp < p.epochs
    assert p.eps_schedule()(p.epochs) == p.eps_train


def test_presets_consistent():
    for p in PRESETS.values():
        assert p.eps_start + p.eps_ramp <= p.epochs
        assert all(0 < m <= p.epochs for m in p.lr_milestones)
        assert p.eps_kind in S.RAMP_KINDS and p.method in S.TRAIN_METHODS
        assert 0 <= p.kappa_end <= 1 and 0 <= p.beta_end <= 1
        d = p.to_dict()
        assert d["name"] == p.name and d["eps_train"] == p.eps_train
        # eta: held through the clean epochs, at eta_end once eps is full
        eta = p.eta_schedule()
        assert eta(0) == p.eta_start and eta(p.eps_start + p.eps_ramp) == p.eta_end


def test_get_preset_overrides():
    p = S.get_preset("mnist-paper", method="crown-ibp", epochs=5)
    assert p.method == "crown-ibp" and p.epochs == 5
    assert PRESETS["mnist-paper"].epochs == 200  # original unchanged
    assert S.get_preset("fast-cifar") is PRESETS["fast-cifar"]
    with pytest.raises(KeyError, match="known presets"):
        S.get_preset("imagenet-paper")
    with pytest.raises(ValueError):
        S.get_preset("mnist-paper", method="pgd")
