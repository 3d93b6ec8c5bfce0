"""Products of two computed tensors: ``Mul`` (elementwise, with broadcasting) and ``MatMul``
(``a @ b`` on the last two axes: attention's ``Q K^T`` and ``P V``).

Their converters live with the constant cases (:mod:`.arithmetic` ``_arith`` for Mul / Div,
:mod:`.linear` ``convert_matmul``); this module holds the rules.

McCormick planes. For ``x in [lx, ux]``, ``y in [ly, uy]`` (widths ``wx, wy``):

* lower ``L1 = ly x + lx y - lx ly`` (``xy - L1 = (x - lx)(y - ly) >= 0``),
  ``L2 = uy x + ux y - ux uy`` (``xy - L2 = (ux - x)(uy - y) >= 0``);
* upper ``U1 = uy x + lx y - lx uy`` (``U1 - xy = (x - lx)(uy - y) >= 0``),
  ``U2 = ly x + ux y - ux ly`` (``U2 - xy = (ux - x)(y - ly) >= 0``).

Each plane is exact at three corners of the box and off by ``wx wy`` at the fourth (the
area between plane and surface is the same for both planes of a side), so the extreme of
a plane over the box is the extreme of four values. Strategies:

* ``constant``: the interval bounds (min / max of the corner products; the linear methods
  then reproduce IBP);
* ``adaptive``: of the two planes of a side, the one whose extreme over the box is better;
* ``tight``: that plane when its extreme equals the product's (so the line never concretises
  looser than IBP: Theorem 2's condition), else the constant line.

Intercepts are widened by a few ulps of the plane's terms (the float rounding of
``a x + b y + c``). Infinite input bounds give the constant lines (possibly infinite).
MatMul applies this to every product term ``a_ik b_kj`` of ``y_ij = sum_k a_ik b_kj``.

Shapes: relaxations are ``(aL, bL, cL, aU, bU, cU)``: slopes on the first / second operand
and intercepts, ``(B, *out_shape)`` for Mul, ``(B, H, m, k, n)`` (slopes) and
``(B, H, m, n)`` (intercepts) for MatMul, ``H`` the flattened leading axes.
"""
from __future__ import annotations

import numpy as np

from .base import Maps, OpRule, check_strategy, each_side
from .curves import eps_of
from .registry import register


def corner_range(bk, lx, ux, ly, uy):
    """``(min, max)`` of ``x y`` over the box (0 for ``0 * inf``: the value is 0)."""
    cs = [lx * ly, lx * uy, ux * ly, ux * uy]
    cs = [bk.where(c == c, c, c * 0) for c in cs]
    lo, hi = cs[0], cs[0]
    for c in cs[1:]:
        lo, hi = bk.minimum(lo, c), bk.maximum(hi, c)
    return lo, hi


def mccormick(bk, lx, ux, ly, uy, strategy, dtype, bound=None):
    """Lines ``aL x + bL y + cL <= x y <= aU x + bU y + cU`` on the box (all arrays of the
    broadcast shape): ``(aL, bL, cL, aU, bU, cU)``. ``bound``: a known ``|x y| <= bound``
    (it clips the interval lines; ``tight`` then keeps a plane only when it is exact at the
    clipped extreme)."""
    strategy = check_strategy(strategy)
    shape = np.broadcast_shapes(tuple(lx.shape), tuple(ly.shape))
    lx, ux, ly, uy = (bk.broadcast_to(v, shape) + 0 for v in (lx, ux, ly, uy))
    # bounds computed separately can cross by a rounding error (point intervals): their hull
    lx, ux, ly, uy = bk.minimum(lx, ux), bk.maximum(lx, ux), bk.minimum(ly, uy), bk.maximum(ly, uy)
    with np.errstate(all="ignore"):
        lo, hi = corner_range(bk, lx, ux, ly, uy)
        if bound is not None:
            lo, hi = clip_range(bk, lo, hi, bound)
        zero = lx * 0
        if strategy == "constant":
            return zero, zero, lo, zero, zero, hi
        finite = bk.isfinite(lx) & bk.isfinite(ux) & bk.isfinite(ly) & bk.isfinite(uy)
        lx, ux, ly, uy = (bk.where(finite, v, zero) for v in (lx, ux, ly, uy))
        ww = (ux - lx) * (uy - ly)
        c1, c2, c3, c4 = lx * ly, lx * uy, ux * ly, ux * uy
        m = bk.minimum(c2, c3)
        min1, min2 = bk.minimum(bk.minimum(m, c1), c4 - ww), bk.minimum(bk.minimum(m, c4), c1 - ww)
        M = bk.maximum(c1, c4)
        max1, max2 = bk.maximum(bk.maximum(M, c2), c3 + ww), bk.maximum(bk.maximum(M, c3), c2 + ww)
        low1 = min1 >= min2  # plane L1 (slopes ly, lx) else L2 (uy, ux)
        up1 = max1 <= max2  # plane U1 (slopes uy, lx) else U2 (ly, ux)
        aL, bL = bk.where(low1, ly, uy), bk.where(low1, lx, ux)
        cL = -aL * bL
        aU, bU = bk.where(up1, uy, ly), bk.where(up1, lx, ux)
        cU = -aU * bU
        if strategy == "tight":
            tol_l = 1e-12 * (1 + bk.abs(lo))
            tol_h = 1e-12 * (1 + bk.abs(hi))
            keep_l = finite & (bk.maximum(min1, min2) >= lo - tol_l)
            keep_u = finite & (bk.minimum(max1, max2) <= hi + tol_h)
        else:
            keep_l = keep_u = finite
        # outward rounding of a x + b y + c (|x| <= max(|lx|, |ux|), likewise y)
        eps = 4 * eps_of(dtype)
        mx, my = bk.maximum(bk.abs(lx), bk.abs(ux)), bk.maximum(bk.abs(ly), bk.abs(uy))
        cL = cL - eps * (bk.abs(aL) * mx + bk.abs(bL) * my + bk.abs(cL))
        cU = cU + eps * (bk.abs(aU) * mx + bk.abs(bU) * my + bk.abs(cU))
        aL, bL, cL = (bk.where(keep_l, v, zero) for v in (aL, bL, cL))
        cL = bk.where(keep_l, cL, lo)
        aU, bU, cU = (bk.where(keep_u, v, zero) for v in (aU, bU, cU))
        cU = bk.where(keep_u, cU, hi)
        return aL, bL, cL, aU, bU, cU


def clip_range(bk, lo, hi, bound):
    """``[lo, hi]`` intersected with ``[-bound, bound]``."""
    return bk.maximum(lo, -bound), bk.minimum(hi, bound)


def unbroadcast(bk, A, shape, lead: int):
    """Sum ``A (*lead axes, *full)`` over the axes where ``shape`` has 1 and ``full`` not
    (keeping them) -> ``(*lead axes, *shape)``."""
    full = tuple(A.shape[lead:])
    axes = tuple(lead + i for i, (s, f) in enumerate(zip(shape, full)) if s == 1 and f != 1)
    return bk.sum(A, axis=axes, keepdims=True) if axes else A


def _through(bk, A, a_lo, a_hi, upper):
    """``pos(A) a_lo + neg(A) a_hi`` for a lower pass, mirrored for an upper one."""
    lo, hi = (a_hi, a_lo) if upper else (a_lo, a_hi)
    return bk.pos(A) * lo + bk.neg(A) * hi


@register
class Mul(OpRule):
    """``y = a * b`` for two computed tensors (broadcasting between their sample shapes).
    attrs ``bound`` (optional): a proven ``|y| <= bound`` (LayerNormalization's normalised
    values, see :mod:`.layernorm`)."""

    op = "Mul"
    mixes = True

    def forward(self, bk, node, a, b):
        with np.errstate(all="ignore"):  # inf * 0 is NaN, as in onnxruntime
            return a * b

    def interval(self, bk, node, *bounds):
        (la, ua), (lb, ub) = bounds
        lo, hi = corner_range(bk, la, ua, lb, ub)
        bound = node.attrs.get("bound")
        return (lo, hi) if bound is None else clip_range(bk, lo, hi, bound)

    def relax(self, bk, node, bounds, strategy):
        (la, ua), (lb, ub) = bounds
        return mccormick(bk, la, ua, lb, ub, strategy, la.dtype, node.attrs.get("bound"))

    def forward_linear(self, bk, node, relax, maps):
        aL, bL, cL, aU, bU, cU = relax
        ma, mb = maps
        e = lambda v: v[:, None]  # noqa: E731  (B, *out) -> (B, 1, *out)
        pos, neg = bk.pos, bk.neg
        Lk = e(pos(aL)) * ma.Lk + e(neg(aL)) * ma.Uk + e(pos(bL)) * mb.Lk + e(neg(bL)) * mb.Uk
        Lc = pos(aL) * ma.Lc + neg(aL) * ma.Uc + pos(bL) * mb.Lc + neg(bL) * mb.Uc + cL
        Uk = e(pos(aU)) * ma.Uk + e(neg(aU)) * ma.Lk + e(pos(bU)) * mb.Uk + e(neg(bU)) * mb.Lk
        Uc = pos(aU) * ma.Uc + neg(aU) * ma.Lc + pos(bU) * mb.Uc + neg(bU) * mb.Lc + cU
        return Maps(Lk, Lc, Uk, Uc)

    def backward_linear(self, bk, node, step, AL, AU):
        aL, bL, cL, aU, bU, cU = (v[:, None] for v in step.relax)
        sa, sb = step.in_shapes

        def side(A, up):
            ca = unbroadcast(bk, _through(bk, A, aL, aU, up), tuple(sa), 2)
            cb = unbroadcast(bk, _through(bk, A, bL, bU, up), tuple(sb), 2)
            return (ca, cb), bk.sum(bk.reshape(_through(bk, A, cL, cU, up), tuple(A.shape[:2]) + (-1,)), axis=2)

        return each_side(AL, AU, side)

    def vjp(self, bk, node, g, xs, y):
        a, b = xs
        return [unbroadcast(bk, g * b, tuple(a.shape[1:]), 1), unbroadcast(bk, g * a, tuple(b.shape[1:]), 1)]


def _lead(node_shape):
    return tuple(node_shape[:-2])


@register
class MatMul(OpRule):
    """``y = a @ b`` for two computed tensors: sample shapes ``(*lead_a, m, k)`` and
    ``(*lead_b, k, n)`` (same rank >= 2, leading axes broadcast) -> ``(*lead, m, n)``."""

    op = "MatMul"
    mixes = True

    def forward(self, bk, node, a, b):
        return bk.matmul(a, b)

    @staticmethod
    def _terms(bk, la, ua, lb, ub):
        """Bounds of the terms ``a_ik b_kj`` as ``(B, *lead, m, k, 1)`` / ``(B, *lead, 1, k, n)``."""
        ea = lambda v: v[..., :, :, None]  # noqa: E731
        eb = lambda v: v[..., None, :, :]  # noqa: E731
        return ea(la), ea(ua), eb(lb), eb(ub)

    def interval(self, bk, node, *bounds):
        (la, ua), (lb, ub) = bounds
        lo, hi = corner_range(bk, *self._terms(bk, la, ua, lb, ub))
        return bk.sum(lo, axis=-2), bk.sum(hi, axis=-2)

    def relax(self, bk, node, bounds, strategy):
        (la, ua), (lb, ub) = bounds
        aL, bL, cL, aU, bU, cU = mccormick(bk, *self._terms(bk, la, ua, lb, ub), strategy, la.dtype)
        B = la.shape[0]
        m, k, n = tuple(aL.shape[-3:])
        flat = lambda v: bk.reshape(v, (B, -1, m, k, n))  # noqa: E731
        return (flat(aL), flat(bL), bk.sum(flat(cL), axis=3), flat(aU), flat(bU), bk.sum(flat(cU), axis=3))

    def _flat_in(self, bk, v, lead, extra: int):
        """``(*first extra axes, *lead_v, r, c)`` -> ``(*first, H, r, c)`` broadcast to ``lead``."""
        shape = tuple(v.shape[:extra]) + tuple(lead) + tuple(v.shape[-2:])
        v = bk.broadcast_to(v, shape)
        return bk.reshape(v, tuple(v.shape[:extra]) + (-1,) + tuple(v.shape[-2:]))

    def forward_linear(self, bk, node, relax, maps):
        aL, bL, cL, aU, bU, cU = relax
        ma, mb = maps
        lead = _lead(node.shape)
        B, n0 = ma.Lk.shape[:2]
        pos, neg = bk.pos, bk.neg
        K = lambda v: self._flat_in(bk, v, lead, 2)  # noqa: E731  (B, n0, H, r, c)
        C = lambda v: self._flat_in(bk, v, lead, 1)  # noqa: E731  (B, H, r, c)
        ek = lambda s, A: bk.einsum("bhmkn,bzhmk->bzhmn", s, A)  # noqa: E731  slopes on a
        fk = lambda s, Bm: bk.einsum("bhmkn,bzhkn->bzhmn", s, Bm)  # noqa: E731  slopes on b
        ec = lambda s, A: bk.einsum("bhmkn,bhmk->bhmn", s, A)  # noqa: E731
        fc = lambda s, Bm: bk.einsum("bhmkn,bhkn->bhmn", s, Bm)  # noqa: E731
        Lk = ek(pos(aL), K(ma.Lk)) + ek(neg(aL), K(ma.Uk)) + fk(pos(bL), K(mb.Lk)) + fk(neg(bL), K(mb.Uk))
        Uk = ek(pos(aU), K(ma.Uk)) + ek(neg(aU), K(ma.Lk)) + fk(pos(bU), K(mb.Uk)) + fk(neg(bU), K(mb.Lk))
        Lc = ec(pos(aL), C(ma.Lc)) + ec(neg(aL), C(ma.Uc)) + fc(pos(bL), C(mb.Lc)) + fc(neg(bL), C(mb.Uc)) + cL
        Uc = ec(pos(aU), C(ma.Uc)) + ec(neg(aU), C(ma.Lc)) + fc(pos(bU), C(mb.Uc)) + fc(neg(bU), C(mb.Lc)) + cU
        out = (B,) + tuple(node.shape)
        return Maps(bk.reshape(Lk, (B, n0) + out[1:]), bk.reshape(Lc, out), bk.reshape(Uk, (B, n0) + out[1:]),
                    bk.reshape(Uc, out))

    def backward_linear(self, bk, node, step, AL, AU):
        aL, bL, cL, aU, bU, cU = step.relax
        sa, sb = (tuple(s) for s in step.in_shapes)
        lead = _lead(node.shape)
        B, R = AL.shape[:2]

        def side(A, upper):
            Af = bk.reshape(A, (B, R, -1) + tuple(node.shape[-2:]))  # (B, R, H, m, n)
            P, N = bk.pos(Af), bk.neg(Af)
            (a1, a2, b1, b2, c1, c2) = (aU, aL, bU, bL, cU, cL) if upper else (aL, aU, bL, bU, cL, cU)
            ca = bk.einsum("brhmn,bhmkn->brhmk", P, a1) + bk.einsum("brhmn,bhmkn->brhmk", N, a2)
            cb = bk.einsum("brhmn,bhmkn->brhkn", P, b1) + bk.einsum("brhmn,bhmkn->brhkn", N, b2)
            bias = bk.einsum("brhmn,bhmn->br", P, c1) + bk.einsum("brhmn,bhmn->br", N, c2)
            ca = unbroadcast(bk, bk.reshape(ca, (B, R) + lead + sa[-2:]), sa, 2)
            cb = unbroadcast(bk, bk.reshape(cb, (B, R) + lead + sb[-2:]), sb, 2)
            return (ca, cb), bias

        return each_side(AL, AU, side)

    def vjp(self, bk, node, g, xs, y):
        a, b = xs
        nd = a.ndim
        perm = tuple(range(nd - 2)) + (nd - 1, nd - 2)
        ga = bk.matmul(g, bk.transpose(b, perm))
        gb = bk.matmul(bk.transpose(a, perm), g)
        return [unbroadcast(bk, ga, tuple(a.shape[1:]), 1), unbroadcast(bk, gb, tuple(b.shape[1:]), 1)]
