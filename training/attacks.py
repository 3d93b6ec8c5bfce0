"""l_inf PGD on torch classifiers: the evaluation attack and the training-time attack.

* :func:`pgd_attack` -- evaluation (PAPER_NOTES.md §4: 200 steps, 10 restarts): an example
  counts as broken if it is misclassified clean or any restart, at any step, finds a
  misclassified point; returns the first misclassified point found.
* :func:`pgd_point` -- training (MTL-IBP, SABR): a few steps of sign-gradient ascent on the
  cross-entropy from a random start, returning the last iterate (the point of highest loss
  the attack reached, not necessarily misclassified), without gradients into the model.

Shapes: ``x``, ``lower``, ``upper`` ``(B, *input_shape)`` (the box already clamped to the
data range), ``y`` ``(B,)`` int64.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["pgd_attack", "pgd_point"]


def _logits(module, x: torch.Tensor) -> torch.Tensor:
    return module(x).reshape(x.shape[0], -1)


def pgd_attack(module, x, y, lower, upper, steps: int = 200, restarts: int = 10, step_size=None,
               generator=None):
    """l_inf PGD on a torch classifier.  Returns ``(broken (B,) bool, x_adv (B, *shape))``:
    ``x_adv`` is the first misclassified point found (``x`` itself when clean-misclassified
    or never broken).  ``step_size`` defaults to ``2.5 * radius / steps`` per coordinate."""
    if step_size is None:
        step_size = 2.5 * (upper - lower).amax(dim=0, keepdim=True) / 2 / max(steps, 1)
    with torch.no_grad():
        broken = _logits(module, x).argmax(1) != y
    x_adv = x.clone()
    for _ in range(restarts):
        idx = (~broken).nonzero().reshape(-1)
        if idx.numel() == 0 or steps <= 0:
            break
        ys, lo, hi = y[idx], lower[idx], upper[idx]
        xa = lo + (hi - lo) * torch.rand(lo.shape, generator=generator, dtype=lo.dtype, device=lo.device)
        found = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        best = xa.clone()
        for step in range(steps + 1):
            xa = xa.detach().requires_grad_(True)
            logits = _logits(module, xa)
            wrong = (logits.argmax(1) != ys) & ~found
            if wrong.any():
                best[wrong] = xa.detach()[wrong]
                found |= wrong
            if step == steps or bool(found.all()):
                break
            loss = F.cross_entropy(logits, ys, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xa)
            xa = torch.maximum(torch.minimum(xa.detach() + step_size * grad.sign(), hi), lo)
        hit = idx[found]
        broken[hit] = True
        x_adv[hit] = best[found]
    return broken, x_adv


def pgd_point(module, x: torch.Tensor, y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, steps: int = 8,
              step_size: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A PGD point in ``[lower, upper]`` for training: random start, ``steps`` sign-gradient
    steps on the summed cross-entropy of size ``step_size`` (default ``2.5 * radius / steps``
    per coordinate, ``radius = (upper - lower) / 2``).  The module's train/eval flag is left as
    it is (call it in eval mode so that BatchNorm statistics are not updated).  Returns a
    detached ``(B, *shape)`` tensor; ``steps = 0`` returns the random start."""
    lo, hi = lower.detach(), upper.detach()
    xa = lo + (hi - lo) * torch.rand(lo.shape, generator=generator, dtype=lo.dtype, device="cpu").to(lo.device)
    if step_size is None:
        step = 2.5 * (hi - lo) / 2 / max(steps, 1)
    else:
        step = torch.full_like(lo, float(step_size))
    with torch.enable_grad():  # also under an outer no_grad (the attack needs input gradients)
        for _ in range(int(steps)):
            xa = xa.detach().requires_grad_(True)
            loss = F.cross_entropy(_logits(module, xa), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xa)
            xa = torch.maximum(torch.minimum(xa.detach() + step * grad.sign(), hi), lo)
    return xa.detach()
