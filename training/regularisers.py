"""The fast recipe's warm-up regularisers (PAPER_NOTES.md §4; Shi et al., NeurIPS 2021).

Both act on the IBP bounds ``[l, u]`` of the pre-activations (the input of every activation
node, i.e. after BatchNorm), averaged over the activation layers, with ``tau`` = 0.5:

* tightness: ``relu(tau - D0 / D_i) / tau`` where ``D0`` is the mean input radius and ``D_i``
  the mean radius ``(u - l) / 2`` of layer ``i``;
* ReLU balance: with centres ``c = (u + l) / 2``, active mask ``l > 0``, inactive mask
  ``u < 0``: ``m`` = (mean of ``c`` over active) / -(mean of ``c`` over inactive) and ``v`` =
  ratio of the summed squared deviations of ``c`` from the layer mean over active and inactive
  neurons, each folded to ``min(x, 1/x)``; term ``[relu(tau - m) + relu(tau - v)] / tau``.

"mean over active" is the mean of ``c * mask`` over all entries, as the reference code does.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

__all__ = ["tightness_and_balance", "warmup_regularisers"]

_TINY = 1e-12


def _fold(r: torch.Tensor) -> torch.Tensor:
    return torch.minimum(r, 1.0 / r.clamp_min(_TINY))


def tightness_and_balance(l: torch.Tensor, u: torch.Tensor, d0: torch.Tensor, tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two terms for one layer's pre-activation bounds ``l``/``u`` (``(B, *shape)``)."""
    radius = (u - l) / 2
    tight = torch.relu(tau - d0 / radius.mean().clamp_min(_TINY)) / tau
    c = (u + l) / 2
    act = (l > 0).to(c.dtype)
    inact = (u < 0).to(c.dtype)
    mean_act = (c * act).mean()
    mean_inact = (c * inact).mean()
    m = _fold((mean_act / (-mean_inact).clamp_min(_TINY)).clamp_min(0))
    dev = (c - c.mean()) ** 2
    v = _fold((dev * act).sum() / (dev * inact).sum().clamp_min(_TINY))
    balance = (torch.relu(tau - m) + torch.relu(tau - v)) / tau
    return tight, balance


def warmup_regularisers(net, env: Dict[str, tuple], lower: torch.Tensor, upper: torch.Tensor,
                        tau: float = 0.5) -> Tuple[torch.Tensor, Dict[str, float]]:
    """``(L_tightness + L_relu, {"reg_tightness": .., "reg_relu": ..})`` averaged over the
    activation nodes of ``net`` (a :class:`~.tied.TrainableNetwork`), from the IBP node bounds
    ``env`` of the same batch.  ``lower``/``upper``: the input box."""
    d0 = ((upper - lower) / 2).mean().detach()
    tights, balances = [], []
    for node in net.activation_nodes:
        l, u = env[node.inputs[0]]
        t, b = tightness_and_balance(l, u, d0, tau)
        tights.append(t)
        balances.append(b)
    if not tights:
        zero = lower.new_zeros(())
        return zero, {"reg_tightness": 0.0, "reg_relu": 0.0}
    lt = torch.stack(tights).mean()
    lr = torch.stack(balances).mean()
    return lt + lr, {"reg_tightness": float(lt.detach()), "reg_relu": float(lr.detach())}
