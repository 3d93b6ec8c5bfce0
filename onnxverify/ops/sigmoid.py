"""S-shaped activations: ``Sigmoid`` and ``Tanh`` (convex for ``z < 0``, concave for ``z > 0``).

Bounding lines as in CROWN: on a concave piece the upper line is the tangent at the midpoint
and the lower line the chord; on a mixed interval the tangents at ``d`` in ``[d*, u]`` are
upper lines, ``d*`` the point whose tangent passes through ``(l, f(l))`` (found by
bisection), or the chord when no tangent fits. Lower lines follow by symmetry: ``f(z) = 2c -
f(-z)`` with ``c = f(0)``. Which tangent of the range, by strategy:

* ``adaptive`` (default): the middle of the range, ``(d* + u) / 2``;
* ``tight``: the one nearest the interval's midpoint, ``max(d*, (l + u) / 2)``, which
  minimises the area between line and f (auto_LiRPA's CROWN gives the same bounds).

Neither dominates, and ``verify`` runs both. The default is the middle because alpha-CROWN
and branch and bound start from it better: on a 3-7-6-1 ReLU -> Sigmoid net branch and bound
proved a threshold in 577 subdomains from it and stalled at -0.0025 after 42k from the
other; on eran's net alpha-CROWN reaches margins 3.0-10.8 from it, 2.3-9.3 from the other. Both beat ``d*`` alone (the steepest, far from
f at a wide interval's other end; used before session 23). Mean CROWN output widths: a
random 20-50x5-5 Tanh MLP at eps 0.01 / 0.03 / 0.05: ``d*`` 0.633 / 15.0 / 21.8, middle
0.626 / 12.7 / 23.0, nearest-midpoint 0.626 / 9.85 / 18.8 (auto_LiRPA 0.7.1 CROWN: 0.626 /
9.86 / 18.8); eran's ffnnSIGMOID 6x200 (image 3991), pre-activation widths of layers 2 / 3 / 4:
4.12 / 9.40 / 23.1, 3.15 / 5.43 / 6.50, 3.22 / 5.72 / 7.68 (auto_LiRPA 3.22 / 5.72 / 7.68),
and margins -114..-383, -0.11..+5.0, -6.1..-1.6.
"""
from __future__ import annotations

from .base import Example, unary_converter
from .generic import ElementwiseRule
from .lines import chord, constant_lines, per_bounds
from .registry import register


def s_tangent_range(bk, f, df, l, u, iters=30):
    """Where the upper line of an S-shaped f on ``[l, u]`` may touch f: ``(d_lo, d_hi,
    tangent)``. Where ``tangent`` holds, the tangent at every ``d`` in ``[d_lo, d_hi]`` is
    an upper line: on a concave piece (``l >= 0``) any ``d`` in ``[l, u]``; on a mixed interval
    any ``d >= d*``, the point whose tangent passes through ``(l, f(l))`` (the tangent's value
    at ``l``, ``f(d) + f'(d) (l - d)``, grows with ``d`` where f is concave, and the convex
    piece ``[l, 0]`` lies below the chord from ``(l, f(l))`` to ``(0, f(0))``, which lies below
    the tangent). Elsewhere (convex pieces, or no such ``d`` below ``u``) the chord is used."""
    tangent_at = lambda d: f(d) + df(d) * (l - d)  # noqa: E731  value at l of the tangent at d
    top = bk.maximum(u, 0.0)
    lo, hi = l * 0, top
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = tangent_at(mid) >= f(l)
        hi = bk.where(above, mid, hi)
        lo = bk.where(above, lo, mid)
    concave = l >= 0
    mixed = (l < 0) & (u > 0) & (tangent_at(top) > f(l))
    return bk.where(concave, l, hi), bk.where(concave, u, top), concave | mixed


def s_alpha_upper(bk, f, df, l, u, a, ranges=None):
    """Upper line ``(aU, bU)`` ``(B, K, *shape)`` of an S-shaped f on ``[l, u]`` (``(B,
    *shape)``): the tangent at ``d = d_lo + a (d_hi - d_lo)`` for ``a`` ``(B, K, *shape)`` in
    ``[0, 1]`` where :func:`s_tangent_range` allows one, else the chord. ``ranges``: that
    function's result and the chord ``(slope, intercept)`` for these ``l, u``, if known."""
    if ranges is None:
        ranges = s_tangent_range(bk, f, df, l, u) + chord(bk, f, l, u)
    d_lo, d_hi, tangent, cs, cb = (v[:, None] for v in ranges)
    d = d_lo + a * (d_hi - d_lo)
    slope = df(d)
    return bk.where(tangent, slope, cs + a * 0), bk.where(tangent, f(d) - slope * d, cb + a * 0)


def s_tangent_fraction(bk, l, u, d_lo, d_hi, middle: bool):
    """``a`` ``(B, *shape)`` in ``[0, 1]`` picking the tangent ``d = d_lo + a (d_hi - d_lo)`` of
    :func:`s_tangent_range`'s range on ``[l, u]``: its middle, or (not ``middle``) its point
    nearest the interval's midpoint ``m``, which minimises the area between line and f (that
    area's derivative in ``d`` is ``f''(d) (m - d)`` times ``u - l``, and ``f'' < 0`` on the
    range). On a concave piece (range ``[l, u]``) both are ``m``."""
    if middle:
        return l * 0 + 0.5
    a = (bk.maximum(d_lo, (l + u) / 2) - d_lo) / bk.maximum(d_hi - d_lo, 1e-30)
    return bk.minimum(bk.maximum(a, 0.0), 1.0)


class SShapedRule(ElementwiseRule):
    """An S-shaped ``f`` with centre value ``centre = f(0)`` and ``f(z) = 2 centre - f(-z)``."""

    monotone = True
    nonneg_slopes = True
    centre = 0.0

    def f(self, bk, z):
        raise NotImplementedError

    def df(self, bk, z):
        raise NotImplementedError

    def forward(self, bk, node, x):
        return self.f(bk, x)

    def derivative(self, bk, node, x, y):
        return self.df(bk, x)

    def lines(self, bk, node, l, u, strategy):
        f, df = (lambda z: self.f(bk, z)), (lambda z: self.df(bk, z))
        if strategy == "constant":
            return constant_lines(bk, f, l, u)
        cache = {}  # the tangent ranges, found once for the fractions and the lines
        init = self.alpha_init(bk, node, l, u, strategy, cache)
        return tuple(v[:, 0] for v in self.alpha_lines(bk, node, l, u, tuple(a[:, None] for a in init), cache))

    # -- optimisable lines (alpha-CROWN) -----------------------------------------------------------
    #: free-line parameters per neuron: where the lower and the upper tangent touch f
    alpha_count = 2

    def alpha_init(self, bk, node, l, u, strategy, cache=None):
        """``(a_lower, a_upper)`` ``(B, *shape)``: the strategy's tangents (the lines of
        :meth:`lines`, so iteration 0 of alpha-CROWN is CROWN): ``adaptive`` the middle of each
        tangent range, ``tight`` its point nearest the interval's midpoint
        (:func:`s_tangent_fraction`). ``cache``: see :func:`~.lines.per_bounds`."""
        middle = strategy != "tight"  # see the module docstring
        if middle:
            return l * 0 + 0.5, l * 0 + 0.5
        f, df = (lambda z: self.f(bk, z)), (lambda z: self.df(bk, z))
        up, low = self._ranges(bk, node, l, u, f, df, cache)
        return (s_tangent_fraction(bk, -u, -l, low[0], low[1], middle),
                s_tangent_fraction(bk, l, u, up[0], up[1], middle))

    def alpha_lines(self, bk, node, l, u, alphas, cache=None):
        """Tangent lines touching f at points chosen by ``alphas = (a_lo, a_hi)`` (``(B, K,
        *shape)`` in ``[0, 1]``; see :func:`s_alpha_upper`); the lower line is the upper line of
        ``-f(-z)`` on ``[-u, -l]`` mirrored (``f(z) = 2c - f(-z)``). Sound for every alpha."""
        f, df = (lambda z: self.f(bk, z)), (lambda z: self.df(bk, z))
        a_lo, a_hi = alphas
        up, low = self._ranges(bk, node, l, u, f, df, cache)
        aU, bU = s_alpha_upper(bk, f, df, l, u, a_hi, up)
        aLm, bLm = s_alpha_upper(bk, f, df, -u, -l, a_lo, low)
        return aLm, 2 * self.centre - bLm, aU, bU

    # -- branch and bound ---------------------------------------------------------------------------
    #: no exact pieces, but a narrower input interval tightens both lines
    splittable = True

    def split_points(self, bk, node, l, u):
        """Split at the inflection 0 where ``[l, u]`` straddles it (each child is then convex
        or concave, where the tangent and chord lines are tight), else at the midpoint."""
        return [bk.where((l < 0) & (u > 0), l * 0, 0.5 * (l + u))]

    def _ranges(self, bk, node, l, u, f, df, cache=None):
        """Tangent ranges and chords of the upper line on ``[l, u]`` and of the mirrored lower
        line on ``[-u, -l]``; they depend on the bounds only, not on the parameters, so one
        optimisation pass reuses them for every row while ``l``/``u`` are the same arrays
        (:func:`~.lines.per_bounds`)."""
        return per_bounds(cache, node, l, u, lambda: (s_tangent_range(bk, f, df, l, u) + chord(bk, f, l, u),
                                                     s_tangent_range(bk, f, df, -u, -l) + chord(bk, f, -u, -l)))


EXAMPLES = (Example(((2, 9),), low=-6.0, high=6.0), Example(((1, 2, 3, 3),), low=-0.5, high=0.5))


@register
class Sigmoid(SShapedRule):
    op = "Sigmoid"
    centre = 0.5

    def f(self, bk, z):
        return bk.sigmoid(z)

    def df(self, bk, z):
        s = bk.sigmoid(z)
        return s * (1 - s)

    convert = unary_converter("Sigmoid", since=1, examples=EXAMPLES)


@register
class Tanh(SShapedRule):
    op = "Tanh"
    centre = 0.0

    def f(self, bk, z):
        return bk.tanh(z)

    def df(self, bk, z):
        return 1 - bk.tanh(z) ** 2

    convert = unary_converter("Tanh", since=1, examples=EXAMPLES)
