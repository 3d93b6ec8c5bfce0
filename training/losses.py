"""Certified-training losses (PAPER_NOTES.md §4) on top of :class:`~.tied.TrainableNetwork`.

* IBP: ``kappa CE(z(x0), y) + (1 - kappa) CE(-l_margin, y)`` with ``l_margin`` the margin lower
  bounds (``y_y - y_j``) and 0 at the true class;
* CROWN-IBP: the bound in the robust term is ``(1 - beta) l_IBP + beta l_CROWN-IBP`` (the
  CROWN-IBP pass is skipped once ``beta`` < :data:`BETA_SKIP`);
* MTL-IBP (De Palma et al., ICLR 2024): the robust term is the convex combination
  ``alpha CE(-l_IBP, y) + (1 - alpha) CE(z(x_adv), y)`` of the IBP loss over the whole box and
  the cross-entropy at a PGD point ``x_adv`` of the box;
* SABR (Mueller et al., ICLR 2023): the robust term is ``CE(-l_IBP, y)`` over a *small* box of
  radius ``lambda eps`` (per channel, in the model's input units) around a PGD point ``x'``
  searched in the box shrunk by that radius, so the small box lies inside the eps-ball
  (:func:`sabr_box`); ``lambda = 1`` is IBP;
* the fast recipe's warm-up regularisers (:mod:`.regularisers`), weight
  ``reg_lambda (1 - eps_t / eps_max)`` during the eps ramp only.

Every bound comes from the verifier (``onnxverify.bounds``, torch backend); the PGD points
come from :func:`~.attacks.pgd_point` (module in eval mode, no gradient into the weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .regularisers import warmup_regularisers

__all__ = ["BETA_SKIP", "METHODS", "StepTerms", "margin_logits", "robust_ce", "certified_loss", "sabr_box"]

BETA_SKIP = 1e-6
#: training methods (the bound in the robust term)
METHODS = ("ibp", "crown-ibp", "mtl-ibp", "sabr")


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


def sabr_box(lower: torch.Tensor, upper: torch.Tensor, radius: torch.Tensor, centre_fn) -> tuple:
    """SABR's small box inside ``[lower, upper]`` (``(B, *shape)``): centres are searched by
    ``centre_fn(c_lo, c_hi)`` (a PGD point) in ``[lower + radius, upper - radius]`` (the middle
    of the box where it is narrower than ``2 radius``, e.g. clipped at the data range), and the
    box ``[x' - radius, x' + radius]`` is clamped to ``[lower, upper]``.  ``radius``
    broadcasts against ``lower`` (e.g. ``(C, 1, 1)``).  Returns ``(small_lower, small_upper,
    centre)``, all detached."""
    lower, upper = lower.detach(), upper.detach()
    mid = (lower + upper) / 2
    c_lo = torch.minimum(lower + radius, mid)
    c_hi = torch.maximum(upper - radius, mid)
    centre = centre_fn(c_lo, c_hi).detach()
    centre = torch.minimum(torch.maximum(centre, c_lo), c_hi)
    return torch.maximum(centre - radius, lower), torch.minimum(centre + radius, upper), centre


def _attack_point(net, x, y, lo, hi, steps: int, generator) -> torch.Tensor:
    from .attacks import pgd_point

    was = net.module.training
    net.module.eval()  # BatchNorm: no running-statistics update from the attack
    try:
        return pgd_point(net.module, x, y, lo, hi, steps=steps, generator=generator)
    finally:
        net.module.train(was)


def certified_loss(net, x: torch.Tensor, y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, *,
                   eps: float, kappa: float, method: str = "ibp", beta: float = 0.0,
                   crown_strategy: str = "adaptive", reg_weight: float = 0.0, reg_tau: float = 0.5,
                   mtl_alpha: float = 0.5, sabr_lambda: float = 0.4, adv_steps: int = 8,
                   eps_scale=None, generator: Optional[torch.Generator] = None) -> StepTerms:
    """One step's loss.  ``x`` ``(B, *input_shape)`` inputs, ``lower``/``upper`` the input box
    (clamped to the data range), ``eps`` the current radius (0 skips the bounds).

    ``method``: one of :data:`METHODS`.  ``mtl_alpha``: MTL-IBP's weight of the IBP loss;
    ``sabr_lambda``: SABR's box radius as a fraction of eps; ``adv_steps``: PGD steps of the
    MTL-IBP / SABR attack; ``eps_scale``: the radius of one raw-pixel unit in the input's units
    (``(C, 1, 1)``, e.g. ``1 / std``; default 1); ``generator``: PGD random starts.
    The clean forward runs last before the bounds (train-mode BatchNorm uses this batch's
    statistics in the bounds too).
    """
    if method not in METHODS:
        raise ValueError(f"training method must be one of {', '.join(METHODS)}, got {method!r}")
    bounded = eps > 0
    adv_logits = None
    if bounded and method == "sabr":
        scale = 1.0 if eps_scale is None else eps_scale
        radius = float(sabr_lambda) * float(eps) * scale
        if not isinstance(radius, torch.Tensor):
            radius = torch.tensor(radius, dtype=lower.dtype, device=lower.device)
        lower, upper, _ = sabr_box(lower, upper, radius,
                                   lambda a, b: _attack_point(net, x, y, a, b, adv_steps, generator))
    elif bounded and method == "mtl-ibp":
        x_adv = _attack_point(net, x, y, lower, upper, adv_steps, generator)
        adv_logits = net(x_adv)
    logits = net(x)
    clean = F.cross_entropy(logits, y)
    terms = StepTerms(loss=kappa * clean, clean=clean, logits=logits)
    if not bounded:
        return terms
    need_env = reg_weight > 0
    lb, env = net.margin_bounds(lower, upper, y, "ibp", keep_env=need_env)
    if method == "crown-ibp" and beta > BETA_SKIP:
        lb_c, _ = net.margin_bounds(lower, upper, y, "crown-ibp", strategy=crown_strategy)
        lb = (1.0 - beta) * lb + beta * lb_c
    terms.margin_lower = lb
    terms.robust = robust_ce(lb, y)
    if adv_logits is not None:
        adv = F.cross_entropy(adv_logits, y)
        terms.info["loss_adv"] = float(adv.detach())
        terms.info["loss_ibp"] = float(terms.robust.detach())
        terms.robust = mtl_alpha * terms.robust + (1.0 - mtl_alpha) * adv
    terms.loss = terms.loss + (1.0 - kappa) * terms.robust
    if need_env:
        reg, parts = warmup_regularisers(net, env, lower, upper, tau=reg_tau)
        terms.reg = reg
        terms.info.update(parts)
        terms.loss = terms.loss + reg_weight * reg
    return terms
