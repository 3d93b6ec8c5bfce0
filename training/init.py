"""Initialisation helpers for certified training (torch side).

* :func:`ibp_init_` -- the fast recipe's IBP initialisation of a torch module: every conv /
  linear weight but the last layer's ``~ N(0, std^2)``, ``std = sqrt(2 pi) / fan_in``, biases
  zero (the ONNX model builder does the same with ``init="ibp"``).
* :func:`default_init_` -- torch's default (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
* :func:`paramramp_linear_mode_` -- ``r`` = :data:`~.tied.R_LARGE`: ParamRamp acts as
  LeakyReLU(eta) (the clean epochs before eps starts).
* :func:`init_paramramp_r_` -- each neuron's ``r`` set to its mean activation over (a sample
  of) the training set, negatives included, floored at ``1e-4`` (PAPER_NOTES.md §4).  The
  activation is the ParamRamp output in LeakyReLU mode, the network in eval mode.
* :func:`r_noise` -- context manager adding Gaussian noise of std ``factor x`` (layer mean of
  ``r``) to every ``r`` for one step (the paper's over-fitting fix), restored afterwards.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Optional

import torch
from torch import nn

from .tied import R_LARGE

__all__ = ["ibp_init_", "default_init_", "paramramp_linear_mode_", "init_paramramp_r_", "r_noise"]


def _layers(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def ibp_init_(module: nn.Module, generator: Optional[torch.Generator] = None) -> None:
    layers = _layers(module)
    for m in layers[:-1]:
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in, generator=generator)
        if m.bias is not None:
            m.bias.zero_()


@torch.no_grad()
def default_init_(module: nn.Module, generator: Optional[torch.Generator] = None) -> None:
    for m in _layers(module):
        bound = 1.0 / math.sqrt(m.weight[0].numel())
        m.weight.uniform_(-bound, bound, generator=generator)
        if m.bias is not None:
            m.bias.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def paramramp_linear_mode_(net) -> None:
    for m in net.paramramps:
        m.r.fill_(R_LARGE)


@torch.no_grad()
def init_paramramp_r_(net, batches: Iterable[torch.Tensor], floor: float = 1e-4) -> list:
    """Set every ParamRamp's ``r`` to the mean of its output over ``batches`` (normalised
    inputs ``(B, *input_shape)``), computed in LeakyReLU mode and eval mode.  Returns the
    per-layer mean of the new ``r`` (for the log)."""
    if not net.paramramps:
        return []
    paramramp_linear_mode_(net)
    sums = {id(m): None for m in net.paramramps}
    count = [0]

    def hook(module, inputs, output):
        s = output.detach().double().sum(dim=0)
        sums[id(module)] = s if sums[id(module)] is None else sums[id(module)] + s

    handles = [m.register_forward_hook(hook) for m in net.paramramps]
    was = net.module.training
    net.eval()
    try:
        for xb in batches:
            net(xb)
            count[0] += xb.shape[0]
    finally:
        for h in handles:
            h.remove()
        net.module.train(was)
    if count[0] == 0:
        raise ValueError("init_paramramp_r_: no training data")
    means = []
    for m in net.paramramps:
        mean = (sums[id(m)] / count[0]).clamp_min(floor).to(m.r.dtype)
        m.r.copy_(mean.reshape(m.r.shape) if mean.numel() == m.r.numel() else mean.mean().expand_as(m.r))
        means.append(float(m.r.mean()))
    return means


@contextlib.contextmanager
def r_noise(net, factor: float, generator: Optional[torch.Generator] = None):
    """Within the block every ParamRamp ``r`` carries noise ``N(0, (factor * mean(r))^2)``."""
    if factor <= 0 or not net.paramramps:
        yield
        return
    saved = []
    with torch.no_grad():
        for m in net.paramramps:
            saved.append(m.r.detach().clone())
            std = factor * float(m.r.clamp_min(1e-4).mean())
            noise = torch.randn(m.r.shape, generator=generator, device=m.r.device, dtype=m.r.dtype) * std
            m.r.add_(noise)
    try:
        yield
    finally:
        with torch.no_grad():
            for m, s in zip(net.paramramps, saved):
                m.r.copy_(s)


