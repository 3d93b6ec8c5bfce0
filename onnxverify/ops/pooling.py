"""MaxPool and AveragePool over (N, C, H, W)."""
from __future__ import annotations

from . import AffineRule, MonotoneRule, register


@register
class MaxPool(MonotoneRule):
    """attrs: ``kernel``, ``stride``, ``pads`` (t, l, b, r), ``dilation``, ``ceil_mode``.
    Max is monotone in every input, so IBP maps lower to lower and upper to upper."""

    op = "MaxPool"

    def forward(self, bk, node, x):
        a = node.attrs
        return bk.max_pool2d(x, a["kernel"], a["stride"], a["pads"], a["dilation"], a["ceil_mode"])


@register
class AvgPool(AffineRule):
    """attrs: ``kernel``, ``stride``, ``pads``, ``ceil_mode``, ``count_include_pad``.
    A linear map with non-negative weights."""

    op = "AvgPool"

    def apply(self, bk, node, x, bias=True):
        a = node.attrs
        return bk.avg_pool2d(x, a["kernel"], a["stride"], a["pads"], a["ceil_mode"], a["count_include_pad"])
