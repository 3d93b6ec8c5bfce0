"""Elementwise activations: ReLU, LeakyReLU, Sigmoid, Tanh, ParamRamp.

Their bounding lines for the linear methods live in :mod:`onnxverify.relaxations`.
"""
from __future__ import annotations

from ..ir import params_as
from . import MonotoneRule, register


@register
class Relu(MonotoneRule):
    op = "Relu"

    def forward(self, bk, node, x):
        return bk.relu(x)


@register
class LeakyRelu(MonotoneRule):
    """attrs: ``alpha`` (slope for negative inputs, >= 0 for monotonicity)."""

    op = "LeakyRelu"

    def forward(self, bk, node, x):
        alpha = node.attrs["alpha"]
        return bk.where(x >= 0, x, x * alpha)


@register
class Sigmoid(MonotoneRule):
    op = "Sigmoid"

    def forward(self, bk, node, x):
        return bk.sigmoid(x)


@register
class Tanh(MonotoneRule):
    op = "Tanh"

    def forward(self, bk, node, x):
        return bk.tanh(x)


@register
class ParamRamp(MonotoneRule):
    """``f(z) = eta z + (1 - eta) min(max(z, 0), r)``, ``r`` per neuron (sample shape),
    clamped to >= 1e-4. params: ``r``; attrs: ``eta`` in [0, 1]."""

    op = "ParamRamp"

    def forward(self, bk, node, x):
        eta = node.attrs["eta"]
        r = bk.clip_min(params_as(bk, node, "r", x.dtype), 1e-4)
        return x * eta + bk.minimum(bk.relu(x), r) * (1.0 - eta)
