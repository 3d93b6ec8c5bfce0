"""Generic rules that whole op families share: affine ops and elementwise functions.

* :class:`AffineRule` -- ``y = L(x_1, ..., x_k) + c`` with ``L`` linear. A subclass gives
  ``apply`` (``L`` with or without ``c``), ``apply_abs`` (``|L|``: absolute weights) and
  ``adjoint`` (``L^T``); the interval rule (centre/radius), the forward linear step, the
  backward step and the VJP follow.
* :class:`ElementwiseRule` -- ``y_i = f(x_i)``. A subclass gives ``forward``, ``lines``
  (bounding lines per strategy) and ``derivative``; the relaxation, both linear steps, the
  windowed backward step and the VJP follow.
"""
from __future__ import annotations

import math

from .base import Maps, OpRule, check_strategy, each_side, unfold
from .patches import inner, split, stack, take


def flat(bk, a, lead: int):
    """Keep the first ``lead`` axes, flatten the rest."""
    return bk.reshape(a, tuple(a.shape[:lead]) + (-1,))


def window_bias(bk, A, const, win):
    """``<A, const>`` per row, ``A (B, K, C, h, w)`` on window ``win`` of a ``(1, C, H, W)``
    (or ``(B, C, H, W)``) constant -> ``(B, K)``."""
    r0, r1, c0, c1 = win
    c = const[:, :, r0:r1, c0:c1]
    if c.shape[0] == 1:
        return bk.einsum("bkn,n->bk", flat(bk, A, 2), bk.reshape(c, (-1,)))
    return bk.einsum("bkn,bn->bk", flat(bk, A, 2), flat(bk, c, 1))


def _centre_radius(L, U):
    return (L + U) / 2, (U - L) / 2


def _ends(mid, rad):
    return mid - rad, mid + rad


#: elements of one pass's coefficients up to which the lower and upper passes of an affine
#: step are stacked into one kernel call (above it the copy would cost more than the call)
STACK_MAX = 1 << 20


class AffineRule(OpRule):
    """Ops ``y = L(x_1, ..., x_k) + c`` with ``L`` linear. Subclasses define ``apply`` and
    ``adjoint`` (and ``apply_abs`` when ``L`` has negative weights)."""

    affine = True

    def apply(self, bk, node, *xs, bias: bool = True):
        """``L(xs) (+ c)``: ``xs`` one ``(M, *in_shape)`` per input -> ``(M, *node.shape)``."""
        raise NotImplementedError

    def apply_abs(self, bk, node, *xs):
        """``|L|(x)``: the linear part with absolute weights, no bias. Default: L itself
        (true for ops whose weights are all >= 0: reshapes, pads, pooling, concat, add)."""
        return self.apply(bk, node, *xs, bias=False)

    def adjoint(self, bk, node, A, in_shapes):
        """Transpose of the linear part: ``A (M, *out_shape)`` -> one ``(M, *in_shape)`` per input."""
        raise NotImplementedError

    def adjoint_window(self, bk, node, A, win, in_shapes):
        """:meth:`adjoint` restricted to the window ``win`` of the output (windowed ops only):
        ``A (M, C, h, w)`` -> one ``(A_i, win_i)`` per input."""
        raise NotImplementedError

    def adjoint_rows(self, bk, node, idx, in_shapes, dtype):
        """:meth:`adjoint` of unit rows: row ``(b, k)`` is the unit vector of flat output
        position ``idx[b, k]`` (NumPy ints ``(B, K)``) -> one ``(B, K, *in_shape)`` per input,
        or None when the rule has no shortcut (the engine then pushes one-hot rows through
        :meth:`adjoint`). The first step of every intermediate-bound pass."""
        return None

    def adjoint_patches(self, bk, node, P, in_shapes):
        """:meth:`adjoint` on :class:`~.patches.Patches` ``P`` of the output: one Patches (or
        dense ``(B, K, *in_shape)`` array) per input, or None when the rule has no patch
        form (default; the step then scales the patch by the op's diagonal when the plan
        found the op diagonal, else goes dense). Window ops override it (Conv, AvgPool)."""
        return None

    def offset(self, bk, node, in_shapes, dtype):
        """The output at all-zero inputs, ``(1, *shape)``: the op's constant term."""
        zeros = [bk.zeros((1,) + tuple(s), dtype=dtype) for s in in_shapes]
        return self.apply(bk, node, *zeros, bias=True)

    # -- derived rules ----------------------------------------------------------------------------
    def forward(self, bk, node, *xs):
        return self.apply(bk, node, *xs, bias=True)

    def interval(self, bk, node, *bounds):
        # halves first: (lo + hi) / 2 would overflow float32 for |bounds| > 1.7e38
        mids = [lo / 2 + hi / 2 for lo, hi in bounds]
        rads = [hi / 2 - lo / 2 for lo, hi in bounds]
        mid = self.apply(bk, node, *mids, bias=True)
        rad = self.apply_abs(bk, node, *rads)
        return mid - rad, mid + rad

    def relax(self, bk, node, bounds, strategy):
        return None

    def forward_linear(self, bk, node, relax, maps):
        B, n0 = maps[0].Lk.shape[:2]
        fold = lambda k: bk.reshape(k, (B * n0,) + tuple(k.shape[2:]))  # noqa: E731
        if all(m.exact for m in maps):  # exact maps stay exact
            k = unfold(bk, self.apply(bk, node, *[fold(m.Lk) for m in maps], bias=False), B, n0)
            c = self.apply(bk, node, *[m.Lc for m in maps], bias=True)
            return Maps(k, c, k, c)
        # centre/radius form: W+ L + W- U = W mid - |W| rad (two products instead of four)
        halves = [bk.fused(_centre_radius, [m.Lk, m.Uk], 2) for m in maps]
        mid = unfold(bk, self.apply(bk, node, *[fold(c) for c, _ in halves], bias=False), B, n0)
        rad = unfold(bk, self.apply_abs(bk, node, *[fold(r) for _, r in halves]), B, n0)
        cmid = self.apply(bk, node, *[(m.Lc + m.Uc) / 2 for m in maps], bias=True)
        crad = self.apply_abs(bk, node, *[(m.Uc - m.Lc) / 2 for m in maps])
        lo, hi = bk.fused(_ends, [mid, rad], 2)
        return Maps(lo, cmid - crad, hi, cmid + crad)

    def backward_linear(self, bk, node, step, AL, AU):
        """Both passes through one adjoint: the same array when ``AL is AU`` (a pass starts
        with one coefficient array for both bounds, and affine steps keep it shared), else
        stacked as ``2K`` rows while they are small (one kernel call instead of two)."""
        B, K = AL.shape[:2]
        off = bk.reshape(step.offset, (-1,))
        shapes = step.in_shapes

        def through(A, rows):
            biases = bk.einsum("bkn,n->bk", flat(bk, A, 2), off)
            adj = self.adjoint(bk, node, bk.reshape(A, (B * rows,) + tuple(node.shape)), shapes)
            return [bk.reshape(a, (B, rows) + tuple(s)) for a, s in zip(adj, shapes)], biases

        if AU is None or AU is AL:
            outs, bias = through(AL, K)
            return [(a, None if AU is None else a) for a in outs], (bias, None if AU is None else bias)
        if math.prod(AL.shape) <= STACK_MAX:
            outs, bias = through(bk.concat([AL, AU], axis=1), 2 * K)
            return [(a[:, :K], a[:, K:]) for a in outs], (bias[:, :K], bias[:, K:])
        (lo, bl), (hi, bu) = through(AL, K), through(AU, K)
        return list(zip(lo, hi)), (bl, bu)

    def backward_window(self, bk, node, step, AL, AU, win):
        B, K = AL.shape[:2]

        def side(A, upper):
            adj = self.adjoint_window(bk, node, bk.reshape(A, (B * K,) + tuple(A.shape[2:])), win, step.in_shapes)
            return [(bk.reshape(a, (B, K) + tuple(a.shape[1:])), w) for a, w in adj], window_bias(bk, A, step.offset, win)

        pairs, biases = each_side(AL, AU, side)
        return [(lo and lo[0], hi and hi[0], (lo or hi)[1]) for lo, hi in pairs], biases

    def backward_patches(self, bk, node, step, PL, PU):
        """Both passes stacked as ``2K`` rows through :meth:`adjoint_patches`, or through the
        diagonal ``step.diagonal`` (one ``(1, *in_shape)`` array per input, or None) read at
        each row's window; dense (the base step) when neither applies."""
        P = stack(bk, PL, PU)
        outs = self.adjoint_patches(bk, node, P, step.in_shapes)
        if outs is None:
            diag = step.diagonal
            if diag is None:
                return super().backward_patches(bk, node, step, PL, PU)
            A = P.grouped(bk)
            outs = [P.like(P.ungrouped(bk, A * take(bk, d, P)), node_shape=tuple(s)) for d, s in zip(diag, step.in_shapes)]
        t = take(bk, step.offset, P)
        bias = inner(bk, P, P.grouped(bk), t)
        bias_l, bias_u = split(bias, PL, PU)
        return [split(o, PL, PU) for o in outs], (bias_l, bias_u)

    def vjp(self, bk, node, g, xs, y):
        return self.adjoint(bk, node, g, [tuple(x.shape[1:]) for x in xs])


class ElementwiseRule(OpRule):
    """``y_i = f(x_i)`` for one input. Subclasses define ``forward``, ``lines`` and ``derivative``."""

    elementwise = True
    windowed = True
    patches = True
    #: every bounding line has a slope >= 0 (true for monotone f): a cheaper forward step
    nonneg_slopes = False

    def lines(self, bk, node, l, u, strategy: str):
        """Bounding lines on ``[l, u]`` (arrays ``(B, *shape)``): ``(aL, bL, aU, bU)`` with
        ``aL z + bL <= f(z) <= aU z + bU`` for every ``z`` in ``[l, u]``, all shaped like ``l``.
        Must be sound for any ``l <= u`` (equal, tiny and huge intervals included)."""
        raise NotImplementedError(f"{self.op}: bounding lines")

    def derivative(self, bk, node, x, y):
        """``f'(x)`` (any element of the Clarke gradient at kinks), ``y = f(x)`` given."""
        raise NotImplementedError(f"{self.op}: derivative")

    # -- derived rules ----------------------------------------------------------------------------
    def relax(self, bk, node, bounds, strategy):
        (l, u), = bounds
        return self.lines(bk, node, l, u, check_strategy(strategy))

    def forward_linear(self, bk, node, relax, maps):
        aL, bL, aU, bU = relax
        (m,) = maps
        if self.nonneg_slopes:  # lower maps scale lower maps, upper maps upper ones
            lo_k, hi_k = bk.fused(lambda a, L, b, U: (a * L, b * U), [aL[:, None], m.Lk, aU[:, None], m.Uk], 2)
            return Maps(lo_k, aL * m.Lc + bL, hi_k, aU * m.Uc + bU)
        pl, nl, pu, nu = bk.pos(aL), bk.neg(aL), bk.pos(aU), bk.neg(aU)
        lo_k, hi_k = bk.fused(lambda pl, nl, pu, nu, L, U: (pl * L + nl * U, pu * U + nu * L),
                              [pl[:, None], nl[:, None], pu[:, None], nu[:, None], m.Lk, m.Uk], 2)
        return Maps(lo_k, pl * m.Lc + nl * m.Uc + bL, hi_k, pu * m.Uc + nu * m.Lc + bU)

    def backward_linear(self, bk, node, step, AL, AU):
        return self._through_lines(bk, step.relax, AL, AU, None)

    def backward_window(self, bk, node, step, AL, AU, win):
        ((lo, hi),), biases = self._through_lines(bk, step.relax, AL, AU, win)
        return [(lo, hi, win)], biases

    def backward_patches(self, bk, node, step, PL, PU):
        """The lines read at each group's window (:func:`~.patches.take`: zero outside the
        node, so the new patches keep zeros there), then the dense step's arithmetic
        (:meth:`~onnxverify.backend.base.Backend.through_lines`) on each group's rows. Lines
        shared by all rows ``(B, *shape)`` or one per row ``(B, K, *shape)`` (optimised
        slopes); the six arrays are read in one gather."""
        aL, bL, aU, bU = step.relax
        lines = bk.concat([aL, bL, aU, bU, aU - aL, bU - bL], axis=aL.ndim - 3)
        t_l = take(bk, lines, PL)
        t_u = None if PU is None else (t_l if PU is PL or PU.same_geometry(PL) else take(bk, lines, PU))

        def through(P, t, upper):
            B, U, G = P.data.shape[0], P.groups, P.group
            A = bk.reshape(P.data, (B * U, G, -1))
            t = bk.reshape(t, (B * U, t.shape[2], 6, -1))  # (B U, 1 or G, line, C ph pw): views
            if upper:  # pos(A) meets the upper line
                new, bias = bk.through_lines(A, t[:, :, 2], -t[:, :, 4], t[:, :, 3], -t[:, :, 5])
            else:
                new, bias = bk.through_lines(A, t[:, :, 0], t[:, :, 4], t[:, :, 1], t[:, :, 5])
            return P.like(bk.reshape(new, P.data.shape)), bk.reshape(bias, (B, U * G))

        lo, bl = through(PL, t_l, False)
        if PU is None:
            return [(lo, None)], (bl, None)
        hi, bu = through(PU, t_u, True)
        return [(lo, hi)], (bl, bu)

    @staticmethod
    def _through_lines(bk, relax, AL, AU, win):
        """Coefficients through the bounding lines: ``pos(A)`` meets the lower line and
        ``neg(A)`` the upper one for a lower bound (mirrored for an upper bound).

        Lines are ``(B, *shape)`` (shared by every row) or ``(B, K, *shape)`` (one line per
        row and neuron: optimised slopes, alpha-CROWN); ``win`` crops them to a window.
        Returns ``[(AL', AU')], (bias_L, bias_U)`` as :meth:`OpRule.backward_linear` does."""
        per_row = relax[0].ndim == AL.ndim
        B, K = AL.shape[:2]

        def view(v):  # (B, 1 or K, X)
            v = v if per_row else v[:, None]
            v = v if win is None else v[:, :, :, win[0]:win[1], win[2]:win[3]]
            return bk.reshape(v, (B, v.shape[1], -1))

        aL, bL, aU, bU = (view(v) for v in relax)

        def side(A, upper):
            lo_a, lo_b, hi_a, hi_b = (aU, bU, aL, bL) if upper else (aL, bL, aU, bU)
            new, bias = bk.through_lines(bk.reshape(A, (B, K, -1)), lo_a, hi_a - lo_a, lo_b, hi_b - lo_b)
            return [bk.reshape(new, A.shape)], bias

        return each_side(AL, AU, side)

    def vjp(self, bk, node, g, xs, y):
        return [g * self.derivative(bk, node, xs[0], y)]
