"""Per-batch schedules for certified training (pure Python / numpy; no torch import).

Every schedule is a function of a float **epoch position** ``t = epoch + batch_index /
batches_per_epoch`` (epochs counted from 0), so the value changes every batch; use
:func:`epoch_position` to compute ``t``.

* :class:`EpsSchedule` -- perturbation radius: 0 before ``start_epoch``, then a ramp of
  ``ramp_epochs`` epochs to ``eps_max`` ("linear" or "smoothed"), then ``eps_max``.
* :func:`kappa` / :func:`beta_schedule` -- the loss mixing weights of PAPER_NOTES.md §4,
  ``(eps_max - eps_t (1 - end)) / eps_max``: 1 at ``eps_t = 0``, ``end`` at ``eps_max``.
* :class:`EtaSchedule` -- LeakyReLU/ParamRamp slope, e.g. "0.01→0": held at ``eta_start``,
  then lowered to ``eta_end`` over a ramp.
* :class:`LrSchedule` -- step decay: ``lr * gamma ** (number of milestones <= t)``.
* :data:`PRESETS` -- :class:`TrainingPreset` recipes (paper settings, fast-training settings,
  a tiny recipe for tests).

The schedules live in :mod:`.ramps` and are re-exported here; the presets are this module's.

Smoothed ramp
-------------
With ``s`` the ramp fraction in ``[0, 1]``, mid point ``m = 0.25`` and power ``p = 4``::

    g(s) = a s^p                              for 0 <= s <= m
    g(s) = a m^p + p a m^(p-1) (s - m)        for m <= s <= 1
    a    = 1 / (m^(p-1) (p - (p - 1) m))      (so that g(1) = 1)

The linear piece matches the power curve's value and slope at ``s = m``, so ``g`` is C1 on
``[0, 1]`` (and C1 at the start of the ramp, where value and slope are 0); it is monotone and
never above the linear ramp ``g(s) = s``.  For ``m = 1/4, p = 4``: ``a = 256/13``,
``g(s) = (256/13) s^4`` up to ``s = 1/4`` (where ``g = 1/13``), then ``g(s) = (16 s - 3)/13``.
This is the same curve as auto_LiRPA's / CROWN-IBP's ``SmoothedScheduler`` (there in batch
steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .ramps import (  # noqa: F401  (the schedules are re-exported: this module is their public face)
    RAMP_KINDS, SMOOTH_MID, SMOOTH_POWER, EpsSchedule, EtaSchedule, LrSchedule, beta_schedule, check_kind,
    epoch_position, kappa, ramp_fraction, smoothed_fraction)

__all__ = [
    "RAMP_KINDS",
    "epoch_position",
    "ramp_fraction",
    "smoothed_fraction",
    "EpsSchedule",
    "kappa",
    "beta_schedule",
    "EtaSchedule",
    "LrSchedule",
    "TrainingPreset",
    "TRAIN_METHODS",
    "PRESETS",
    "get_preset",
]

#: training methods: the bound of the robust loss term (see ``training.losses``)
TRAIN_METHODS = ("ibp", "crown-ibp", "mtl-ibp", "sabr")


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPreset:
    """A training recipe.  Epochs are 0-based; ``eps_start`` is the first epoch with
    ``eps > 0`` and the ramp reaches ``eps_train`` at ``eps_start + eps_ramp``.

    ``eps_train``/``eps_test`` are in raw pixel units (divide by the data set's std for a
    normalised input; see ``training.data.Dataset.eps_normalized``).  ``method`` is one of
    :data:`TRAIN_METHODS`; ``kappa_end``/``beta_end`` feed :func:`kappa`/:func:`beta_schedule`;
    ``mtl_alpha`` / ``sabr_lambda`` / ``adv_steps`` are MTL-IBP's and SABR's hyper-parameters.
    ``reg_lambda``/``reg_tau`` are the fast-training warm-up regularisers (0 = off), applied
    only during the eps ramp with weight ``reg_lambda (1 - eps_t / eps_max)``.
    """

    name: str
    dataset: str                       # "mnist" | "cifar10" | "digits"
    model: str                         # architecture name (PAPER_NOTES.md §3)
    eps_train: float
    eps_test: Tuple[float, ...]
    batch_size: int
    epochs: int
    lr: float
    lr_milestones: Tuple[int, ...]
    lr_gamma: float
    eps_start: float
    eps_ramp: float
    eps_kind: str = "smoothed"
    optimizer: str = "adam"
    method: str = "ibp"                # "ibp" | "crown-ibp"
    kappa_end: float = 0.0
    beta_end: float = 0.0
    eta_start: float = 0.01            # ParamRamp / LeakyReLU slope, "0.01→0"
    eta_end: float = 0.0
    eta_kind: str = "smoothed"
    grad_clip: Optional[float] = None  # max gradient norm, None = no clipping
    reg_lambda: float = 0.0
    reg_tau: float = 0.5
    init: str = "default"              # "default" | "ibp" (fast-training IBP initialisation)
    batchnorm: bool = False
    augment: bool = False
    weight_decay: float = 0.0
    mtl_alpha: float = 0.5             # MTL-IBP: weight of the IBP loss (1 - alpha: PGD loss)
    sabr_lambda: float = 0.4           # SABR: small-box radius / eps (1 = IBP)
    adv_steps: int = 8                 # PGD steps of the MTL-IBP / SABR attack
    notes: str = ""

    def __post_init__(self) -> None:
        check_kind(self.eps_kind)
        check_kind(self.eta_kind)
        if self.method not in TRAIN_METHODS:
            raise ValueError(f"method must be one of {', '.join(TRAIN_METHODS)}, got {self.method!r}")
        if not 0.0 <= self.mtl_alpha <= 1.0:
            raise ValueError(f"mtl_alpha must be in [0, 1], got {self.mtl_alpha}")
        if not 0.0 < self.sabr_lambda <= 1.0:
            raise ValueError(f"sabr_lambda must be in (0, 1], got {self.sabr_lambda}")
        if int(self.adv_steps) < 0:
            raise ValueError(f"adv_steps must be >= 0, got {self.adv_steps}")
        object.__setattr__(self, "eps_test", tuple(float(e) for e in self.eps_test))
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))

    # -- schedules ------------------------------------------------------------------------
    def eps_schedule(self) -> EpsSchedule:
        return EpsSchedule(self.eps_train, self.eps_start, self.eps_ramp, self.eps_kind)

    def lr_schedule(self) -> LrSchedule:
        return LrSchedule(self.lr, self.lr_milestones, self.lr_gamma)

    def eta_schedule(self) -> EtaSchedule:
        """eta held at ``eta_start`` through the clean epochs, lowered to ``eta_end`` over the
        eps ramp (our choice of timing: the notes only say "held, then lowered, smoothed")."""
        return EtaSchedule(self.eta_start, self.eta_end, self.eps_start, self.eps_ramp, self.eta_kind)

    def kappa_at(self, t: float) -> float:
        return kappa(self.eps_schedule().value(t), self.eps_train, self.kappa_end)

    def beta_at(self, t: float) -> float:
        return beta_schedule(self.eps_schedule().value(t), self.eps_train, self.beta_end)

    @property
    def clean_epochs(self) -> float:
        return float(self.eps_start)

    @property
    def full_eps_epochs(self) -> float:
        return float(self.epochs) - float(self.eps_start) - float(self.eps_ramp)

    # -- conversion -------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainingPreset":
        return dataclasses.replace(self, **changes)


# Paper settings (PAPER_NOTES.md §4): the numbers below are the paper's (which follows
# CROWN-IBP's DM-large configs).  Items the notes do not fix are marked "(CROWN-IBP config)"
# where taken from CROWN-IBP's public configs, or "(choice)".
_MNIST_PAPER = TrainingPreset(
    name="mnist-paper",
    dataset="mnist",
    model="dm-large",
    eps_train=0.4,
    eps_test=(0.2, 0.3, 0.4),
    batch_size=256,
    epochs=200,
    optimizer="adam",
    lr=5e-4,
    lr_milestones=(130, 190),
    lr_gamma=0.1,
    eps_start=10,          # eps = 0 for epochs 0-9
    eps_ramp=50,           # ramp during epochs 10-60, eps_max from epoch 60 on
    eps_kind="linear",     # (CROWN-IBP config: its MNIST DM-large runs use a linear ramp)
    method="ibp",          # the paper reports both IBP- and CROWN-IBP-trained MNIST nets
    kappa_end=0.0,
    beta_end=0.0,          # CROWN-IBP: beta 1 -> 0
    eta_start=0.01,
    eta_end=0.0,
    notes="Paper MNIST setting (DM-large, eps 0.4). Use method='crown-ibp' for the CROWN-IBP run.",
)

_CIFAR_PAPER = TrainingPreset(
    name="cifar-paper",
    dataset="cifar10",
    model="dm-large",
    eps_train=8.8 / 255,
    eps_test=(8.0 / 255,),
    batch_size=1024,       # paper's number (CROWN-IBP: 512 per step x batch multiplier 2)
    epochs=3200,           # paper's number
    optimizer="adam",
    lr=5e-4,               # (CROWN-IBP config)
    lr_milestones=(2600, 3040),  # (CROWN-IBP config)
    lr_gamma=0.1,          # (CROWN-IBP config)
    eps_start=320,         # (CROWN-IBP config: schedule_start 320)
    eps_ramp=1600,         # (CROWN-IBP config: schedule_length 1601 epochs incl. the start)
    eps_kind="smoothed",   # (CROWN-IBP config)
    method="crown-ibp",    # the paper's 8/255 CIFAR results are CROWN-IBP-trained
    kappa_end=0.0,
    beta_end=0.0,          # CROWN-IBP: beta 1 -> 0
    eta_start=0.01,
    eta_end=0.0,
    augment=True,
    notes="Paper CIFAR-10 setting (DM-large, train 8.8/255, test 8/255). Numbers are the paper's.",
)

_CIFAR_PAPER_2 = _CIFAR_PAPER.replace(
    name="cifar-paper-2.2",
    eps_train=2.2 / 255,
    eps_test=(2.0 / 255,),
    method="ibp",          # the paper's 2/255 CIFAR results are IBP-trained
    beta_end=1.0,          # (CROWN-IBP config for 2/255 sets final beta 1, used with crown-ibp)
    notes="Paper CIFAR-10 variant: train 2.2/255, test 2/255. Numbers are the paper's.",
)

# Fast training with short warm-up (Shi et al., NeurIPS 2021), PAPER_NOTES.md §4: CNN-7+BN,
# IBP initialisation, warm-up regularisers (lambda 0.5, tau 0.5), Adam 5e-4, grad clip 10.
_FAST_CIFAR = TrainingPreset(
    name="fast-cifar",
    dataset="cifar10",
    model="cnn7-bn",
    eps_train=8.0 / 255,   # fast training trains at the test eps
    eps_test=(8.0 / 255,),
    batch_size=128,        # (fast-training repository's CIFAR config; not in the notes)
    epochs=160,            # 1 clean + 80 ramp + 79 at full eps
    optimizer="adam",
    lr=5e-4,
    lr_milestones=(120, 140),
    lr_gamma=0.2,
    eps_start=1,
    eps_ramp=80,
    eps_kind="smoothed",
    method="ibp",
    kappa_end=0.0,         # (choice) pure IBP loss once eps is at its maximum
    grad_clip=10.0,
    reg_lambda=0.5,
    reg_tau=0.5,
    init="ibp",
    batchnorm=True,
    augment=True,
    notes="Fast certified training, CIFAR-10 8/255, 160 epochs.",
)

# MNIST fast recipe: 70 epochs, ramp of 20 epochs, lr x0.2 at 50 and 60, batch 256 -- the
# fast-training repository's MNIST setting (its `--length 20` preset: start=2 in its 1-based
# epochs, i.e. one clean epoch; its README example uses start=1, no clean epoch).  We keep
# one clean epoch, matching the CIFAR recipe.
_FAST_MNIST = _FAST_CIFAR.replace(
    name="fast-mnist",
    dataset="mnist",
    eps_train=0.4,
    eps_test=(0.4,),
    batch_size=256,        # (fast-training repository's MNIST config)
    epochs=70,             # 1 clean + 20 ramp + 49 at full eps
    lr_milestones=(50, 60),
    eps_start=1,
    eps_ramp=20,
    augment=False,
    notes="Fast certified training, MNIST 0.4, 70 epochs (see the comment in schedules.py).",
)

# Tiny recipe for tests and smoke runs (all numbers are a choice).
_DIGITS_QUICK = TrainingPreset(
    name="digits-quick",
    dataset="digits",
    model="small",
    eps_train=0.1,
    eps_test=(0.1,),
    batch_size=64,
    epochs=6,
    optimizer="adam",
    lr=1e-3,
    lr_milestones=(5,),
    lr_gamma=0.5,
    eps_start=1,
    eps_ramp=3,
    eps_kind="smoothed",
    method="ibp",
    kappa_end=0.5,         # keep half the clean loss: a few epochs are not enough for pure IBP
    eta_start=0.01,
    eta_end=0.0,
    notes="A few epochs on scikit-learn's 8x8 digits, for tests.",
)

# Beyond the paper (CTBench-era methods) on the paper's MNIST schedule.  Hyper-parameters are
# a choice: MTL-IBP alpha 0.5 and SABR lambda 0.6, as we recall those papers' MNIST eps 0.3
# settings; 8 PGD steps for the training attack.
_MNIST_MTL = _MNIST_PAPER.replace(name="mnist-mtl-ibp", method="mtl-ibp", mtl_alpha=0.5, adv_steps=8,
                                  notes="MTL-IBP on the paper's MNIST schedule (alpha 0.5: a choice).")
_MNIST_SABR = _MNIST_PAPER.replace(name="mnist-sabr", method="sabr", sabr_lambda=0.6, adv_steps=8,
                                   notes="SABR on the paper's MNIST schedule (lambda 0.6: a choice).")

PRESETS: Dict[str, TrainingPreset] = {
    p.name: p
    for p in (_MNIST_PAPER, _MNIST_MTL, _MNIST_SABR, _CIFAR_PAPER, _CIFAR_PAPER_2, _FAST_CIFAR, _FAST_MNIST,
              _DIGITS_QUICK)
}


def get_preset(name: str, **overrides: Any) -> TrainingPreset:
    """A preset by name, with fields replaced by ``overrides``."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
    return preset.replace(**overrides) if overrides else preset
