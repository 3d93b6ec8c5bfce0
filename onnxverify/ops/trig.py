"""``Sin`` and ``Cos``: periodic, neither monotone nor convex.

Interval rule and lines come from :mod:`.curves`: ``f(z) - a z`` is extreme on ``[l, u]`` only
at ``l``, ``u`` or where ``f'(z) = a``; for ``w = z + phase`` (``sin w``: phase 0 for Sin,
``pi / 2`` for Cos) those points are ``w = +-arccos(a) + 2 pi k``, and an interval no wider
than ``2 pi`` holds at most two of each branch: the first two at or after ``l`` are the
candidates. Wider intervals get horizontal lines (slope 0, where the first solution of each
branch already reaches f's extreme value +-1). So every line is the tightest one of its
slope: the adaptive one is the supporting line of the concave (convex) envelope at the
midpoint, the tight one is anchored at an end point where f is extreme, else horizontal.
"""
from __future__ import annotations

import math

from .base import Example, unary_converter
from .curves import CurveRule
from .registry import register

TWO_PI = 2 * math.pi


class Periodic(CurveRule):
    phase = 0.0

    def stationary(self, bk, node, a, l, u):
        r = bk.arccos(bk.minimum(bk.maximum(a, -1.0), 1.0))
        out = []
        for base in (r - self.phase, -r - self.phase):
            first = base + TWO_PI * bk.ceil((l - base) / TWO_PI)
            out += [first, first + TWO_PI]
        return out

    def slope_range(self, bk, node, l, u):
        return l * 0 - 1.0, l * 0 + 1.0

    def choose_slope(self, bk, node, l, u, strategy, upper):
        a = super().choose_slope(bk, node, l, u, strategy, upper)
        return bk.where(u - l > TWO_PI, l * 0, a)


EXAMPLES = (Example(((2, 7),), low=-4.0, high=4.0), Example(((1, 2, 3, 3),), low=-1.0, high=1.0))


@register
class Sin(Periodic):
    op = "Sin"

    def f(self, bk, node, z):
        return bk.sin(z)

    def df(self, bk, node, z):
        return bk.cos(z)

    convert = unary_converter("Sin", since=7, examples=EXAMPLES)


@register
class Cos(Periodic):
    op = "Cos"
    phase = math.pi / 2

    def f(self, bk, node, z):
        return bk.cos(z)

    def df(self, bk, node, z):
        return -bk.sin(z)

    convert = unary_converter("Cos", since=7, examples=EXAMPLES)
