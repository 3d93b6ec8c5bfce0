"""Helpers for bounding lines of elementwise functions (PAPER_NOTES.md §1).

A rule's ``lines(bk, node, l, u, strategy) -> (aL, bL, aU, bU)`` returns arrays shaped like
``l`` (``(batch, *shape)``) such that ``aL z + bL <= f(z) <= aU z + bU`` for all ``z`` in
``[l, u]``. Strategies: ``constant`` (horizontal lines through f(l), f(u) for monotone f: the
linear methods then reproduce IBP), ``tight`` (never looser than constant: what Theorem 2
needs), ``adaptive`` (CROWN's default: lower slope chosen by the larger side).
"""
from __future__ import annotations

GAP = 1e-6  # guard for u - l in chord slopes


def chord(bk, f, l, u, anchor: str = "upper"):
    """Line through (l, f(l)) and (u, f(u)). The slope's denominator is guarded by GAP, so
    the intercept is taken through the ``anchor`` point: the upper point for an upper line,
    the lower point for a lower line. Then the line stays on the correct side of f even
    when u - l < GAP."""
    fl, fu = f(l), f(u)
    slope = (fu - fl) / bk.maximum(u - l, GAP)
    return slope, (fu - slope * u) if anchor == "upper" else (fl - slope * l)


def constant_lines(bk, f, l, u):
    """Horizontal lines through f(l) (lower) and f(u) (upper): sound for non-decreasing f."""
    zero = l * 0
    return zero, f(l), zero, f(u)


def per_bounds(cache, node, l, u, make):
    """``make()``, computed once while the input bounds of ``node`` are the same arrays ``l,
    u``: an optimisation pass evaluates the lines of many parameter iterates on fixed
    bounds, and what does not depend on the parameters is kept in ``cache`` (a dict the
    caller owns for the pass, e.g. the engine's; None: not kept), one entry per node.
    Bounds are never updated in place; bounds that carry gradients (optimised intermediate
    bounds) are not kept."""
    if cache is None or getattr(l, "requires_grad", False) or getattr(u, "requires_grad", False):
        return make()
    hit = cache.get(node.name)
    if hit is not None and hit[0] is l and hit[1] is u:
        return hit[2]
    out = make()
    cache[node.name] = (l, u, out)
    return out
