"""Certified-training losses (PAPER_NOTES.md §4) on top of :class:`~.tied.TrainableNetwork`.

* IBP: ``kappa CE(z(x0), y) + (1 - kappa) CE(-l_margin, y)`` with ``l_margin`` the margin lower
  bounds (``y_y - y_j``) and 0 at the true class;
* CROWN-IBP: the bound in the robust term is ``(1 - beta) l_IBP + beta l_CROWN-IBP`` (the
  CROWN-IBP pass is skipped once ``beta`` < :data:`BETA_SKIP`);
* the fast recipe's warm-up regularisers (:mod:`.regularisers`), weight
  ``reg_lambda (1 - eps_t / eps_max)`` during the eps ramp only.

Every bound comes from the verifier (``onnxverify.bounds``, torch backend).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .regularisers import warmup_regularisers

__all__ = ["BETA_SKIP", "StepTerms", "margin_logits", "robust_ce", "certified_loss"]

BETA_SKIP = 1e-6


def margin_logits(margin_lower: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B, n - 1)`` margin lower bounds (rows of ``margin_spec``: ``j != y`` ascending) ->
    ``(B, n)`` logits ``-l_margin`` with 0 at the true class."""
    b, k = margin_lower.shape
    n = k + 1
    mask = torch.ones(b, n, dtype=torch.bool, device=margin_lower.device)
    mask[torch.arange(b, device=mask.device), labels] = False
    z = margin_lower.new_zeros(b, n)
    z = z.masked_scatter(mask, -margin_lower)
    return z


def robust_ce(margin_lower: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``CE(-l_margin, y)`` (mean over the batch)."""
    return F.cross_entropy(margin_logits(margin_lower, labels), labels)


@dataclass
class StepTerms:
    """The parts of one training step's loss (tensors; ``robust``/``reg`` None when skipped)."""

    loss: torch.Tensor
    clean: torch.Tensor
    logits: torch.Tensor
    robust: Optional[torch.Tensor] = None
    reg: Optional[torch.Tensor] = None
    margin_lower: Optional[torch.Tensor] = None
    info: Dict[str, float] = field(default_factory=dict)


def certified_loss(net, x: torch.Tensor, y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, *,
                   eps: float, kappa: float, method: str = "ibp", beta: float = 0.0,
                   crown_strategy: str = "adaptive", reg_weight: float = 0.0, reg_tau: float = 0.5) -> StepTerms:
    """One step's loss.  ``x`` ``(B, *input_shape)`` normalised inputs, ``lower``/``upper`` the
    input box (clamped to the data range), ``eps`` the current radius (0 skips the bounds).

    Run the clean forward first (train-mode BatchNorm uses this batch's statistics in the
    bounds too).
    """
    logits = net(x)
    clean = F.cross_entropy(logits, y)
    terms = StepTerms(loss=kappa * clean, clean=clean, logits=logits)
    if eps <= 0:
        return terms
    need_env = reg_weight > 0
    lb, env = net.margin_bounds(lower, upper, y, "ibp", keep_env=need_env)
    if method == "crown-ibp" and beta > BETA_SKIP:
        lb_c, _ = net.margin_bounds(lower, upper, y, "crown-ibp", strategy=crown_strategy)
        lb = (1.0 - beta) * lb + beta * lb_c
    elif method not in ("ibp", "crown-ibp"):
        raise ValueError(f"training method must be 'ibp' or 'crown-ibp', got {method!r}")
    terms.margin_lower = lb
    terms.robust = robust_ce(lb, y)
    terms.loss = terms.loss + (1.0 - kappa) * terms.robust
    if need_env:
        reg, parts = warmup_regularisers(net, env, lower, upper, tau=reg_tau)
        terms.reg = reg
        terms.info.update(parts)
        terms.loss = terms.loss + reg_weight * reg
    return terms
