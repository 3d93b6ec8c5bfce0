"""Per-batch schedules of certified training (pure Python; no torch import): the ramps.

Every schedule is a function of a float **epoch position** ``t = epoch + batch_index /
batches_per_epoch`` (:func:`epoch_position`). :class:`EpsSchedule`, :class:`EtaSchedule`,
:class:`LrSchedule`, :func:`kappa`, :func:`beta_schedule` and the smoothed ramp are
described in :mod:`.schedules` (the public module, which re-exports them with the presets).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Tuple

RAMP_KINDS = ("linear", "smoothed")
SMOOTH_MID = 0.25
SMOOTH_POWER = 4.0


def epoch_position(epoch: int, batch_index: int, batches_per_epoch: int) -> float:
    """``t = epoch + batch_index / batches_per_epoch`` (the position of a batch in epochs)."""
    if batches_per_epoch <= 0:
        raise ValueError(f"batches_per_epoch must be positive, got {batches_per_epoch}")
    return float(epoch) + float(batch_index) / float(batches_per_epoch)


def smoothed_fraction(s: float, mid: float = SMOOTH_MID, power: float = SMOOTH_POWER) -> float:
    """The smoothed ramp ``g(s)`` on ``[0, 1]`` (see the module docstring); clamps ``s``."""
    if not 0.0 < mid < 1.0:
        raise ValueError(f"mid must be in (0, 1), got {mid}")
    if power < 1.0:
        raise ValueError(f"power must be >= 1, got {power}")
    s = min(max(float(s), 0.0), 1.0)
    a = 1.0 / (mid ** (power - 1.0) * (power - (power - 1.0) * mid))
    if s <= mid:
        return a * s ** power
    return min(a * mid ** power + power * a * mid ** (power - 1.0) * (s - mid), 1.0)


def ramp_fraction(t: float, start: float, length: float, kind: str = "linear") -> float:
    """Progress in ``[0, 1]`` of a ramp beginning at epoch ``start`` lasting ``length`` epochs.

    0 for ``t <= start``, 1 for ``t >= start + length`` (a zero-length ramp is a step at
    ``start``).  ``kind`` is "linear" or "smoothed".
    """
    check_kind(kind)
    t = float(t)
    if t < start:
        return 0.0
    if length <= 0 or t >= start + length:
        return 1.0
    s = (t - start) / length
    return s if kind == "linear" else smoothed_fraction(s)


def check_kind(kind: str) -> None:
    """Raise ValueError unless ``kind`` is one of :data:`RAMP_KINDS`."""
    if kind not in RAMP_KINDS:
        raise ValueError(f"unknown ramp kind {kind!r}; expected one of {RAMP_KINDS}")


class _Ramp:
    """What the ramped schedules share: fields ``start_epoch``, ``ramp_epochs`` (>= 0) and
    ``kind`` (:data:`RAMP_KINDS`), defined by each dataclass below."""

    def _check_ramp(self) -> None:
        if self.start_epoch < 0 or self.ramp_epochs < 0:
            raise ValueError("start_epoch and ramp_epochs must be >= 0")

    @property
    def end_epoch(self) -> float:
        """Epoch position at which the ramp ends."""
        return float(self.start_epoch) + float(self.ramp_epochs)

    def fraction(self, t: float) -> float:
        """Progress of the ramp at epoch position ``t``, in ``[0, 1]``."""
        return ramp_fraction(t, self.start_epoch, self.ramp_epochs, self.kind)


@dataclass(frozen=True)
class EpsSchedule(_Ramp):
    """Perturbation radius per batch: 0 before ``start_epoch``, ramp over ``ramp_epochs`` to
    ``eps_max`` (reached exactly at ``start_epoch + ramp_epochs``), ``eps_max`` after."""

    eps_max: float
    start_epoch: float = 0.0
    ramp_epochs: float = 0.0
    kind: str = "linear"

    def __post_init__(self) -> None:
        check_kind(self.kind)
        if self.eps_max < 0:
            raise ValueError(f"eps_max must be >= 0, got {self.eps_max}")
        self._check_ramp()

    def value(self, t: float) -> float:
        if self.eps_max == 0:
            return 0.0
        f = self.fraction(t)
        return float(self.eps_max) if f >= 1.0 else float(self.eps_max) * f

    __call__ = value

    def in_ramp(self, t: float) -> bool:
        """True while ``start_epoch <= t < start_epoch + ramp_epochs`` (the warm-up)."""
        return self.start_epoch <= float(t) < self.end_epoch


def kappa(eps_t: float, eps_max: float, kappa_end: float) -> float:
    """Weight of the clean loss: ``(eps_max - eps_t (1 - kappa_end)) / eps_max``.

    1 at ``eps_t = 0``, ``kappa_end`` at ``eps_t = eps_max`` (linear in ``eps_t`` between);
    ``eps_max = 0`` gives 1.  ``eps_t`` is clamped to ``[0, eps_max]``.
    """
    eps_max = float(eps_max)
    if eps_max <= 0:
        return 1.0
    e = min(max(float(eps_t), 0.0), eps_max)
    return (eps_max - e * (1.0 - float(kappa_end))) / eps_max


def beta_schedule(eps_t: float, eps_max: float, beta_end: float) -> float:
    """CROWN-IBP mixing weight ``beta`` (1 → ``beta_end``), the same formula as :func:`kappa`.

    The bound used in the loss is ``(1 - beta) l_IBP + beta l_CROWN-IBP``; skip the CROWN-IBP
    pass once ``beta`` is ~0.
    """
    return kappa(eps_t, eps_max, beta_end)


@dataclass(frozen=True)
class EtaSchedule(_Ramp):
    """Activation leak slope per batch: ``eta_start`` until ``start_epoch``, then moved to
    ``eta_end`` over ``ramp_epochs`` ("smoothed" by default), ``eta_end`` after.

    "0.01→0" is ``EtaSchedule(0.01, 0.0, start, ramp)``; models are evaluated at ``eta_end``.
    """

    eta_start: float
    eta_end: float
    start_epoch: float = 0.0
    ramp_epochs: float = 0.0
    kind: str = "smoothed"

    def __post_init__(self) -> None:
        check_kind(self.kind)
        self._check_ramp()

    def value(self, t: float) -> float:
        f = self.fraction(t)
        if f >= 1.0:
            return float(self.eta_end)
        return float(self.eta_start) + (float(self.eta_end) - float(self.eta_start)) * f

    __call__ = value

    @classmethod
    def constant(cls, eta: float) -> "EtaSchedule":
        return cls(eta, eta, 0.0, 0.0)


@dataclass(frozen=True)
class LrSchedule:
    """Step decay: ``lr * gamma ** k`` with ``k`` the number of milestones ``<= t``.

    A milestone ``m`` takes effect from the start of epoch ``m`` (0-based), like
    ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch.
    """

    lr: float
    milestones: Tuple[float, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        ms = tuple(sorted(float(m) for m in self.milestones))
        object.__setattr__(self, "milestones", ms)
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")

    def value(self, t: float) -> float:
        k = bisect.bisect_right(self.milestones, float(t))
        return float(self.lr) * float(self.gamma) ** k

    __call__ = value
