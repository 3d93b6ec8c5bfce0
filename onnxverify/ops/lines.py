"""Bounding lines of elementwise activations (PAPER_NOTES.md §1).

``lines(node, l, u, strategy, bk) -> (aL, bL, aU, bU)`` with every array shaped like
``l`` (``(batch, *shape)``) such that ``aL z + bL <= f(z) <= aU z + bU`` for all
``z`` in ``[l, u]``. All slopes are >= 0 (the forward pass relies on it).

Strategies: ``constant`` (horizontal lines through f(l), f(u): the linear methods then
reproduce IBP), ``tight`` (never looser than constant: what Theorem 2 needs), ``adaptive``
(CROWN's default: lower slope chosen by the larger side).
"""
from __future__ import annotations

from ..ir import params_as

STRATEGIES = ("constant", "tight", "adaptive")
GAP = 1e-6  # guard for u - l in chord slopes


def _chord(bk, f, l, u, anchor: str = "upper"):
    """Line through (l, f(l)) and (u, f(u)). The slope's denominator is guarded by GAP, so
    the intercept is taken through the ``anchor`` point: the upper point for an upper line,
    the lower point for a lower line. Then the line stays on the correct side of f even
    when u - l < GAP."""
    fl, fu = f(l), f(u)
    slope = (fu - fl) / bk.maximum(u - l, GAP)
    return slope, (fu - slope * u) if anchor == "upper" else (fl - slope * l)


def _constant_lines(bk, f, l, u):
    zero = l * 0
    return zero, f(l), zero, f(u)


# ---- ReLU / LeakyReLU -------------------------------------------------------------------------
def leaky_relu_lines(bk, l, u, eta: float, strategy: str):
    f = lambda z: bk.where(z >= 0, z, z * eta)  # noqa: E731
    if strategy == "constant":
        return _constant_lines(bk, f, l, u)
    one = l * 0 + 1.0
    zero = l * 0
    dead = u <= 0
    alive = (l >= 0) & ~dead
    unstable = ~(alive | dead)
    cs, cb = _chord(bk, f, l, u)
    aU = bk.where(alive, one, bk.where(dead, one * eta, cs))
    bU = bk.where(unstable, cb, zero)
    if strategy == "tight":
        lower_identity = alive
    elif strategy == "adaptive":
        lower_identity = alive | (unstable & (u > -l))
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    aL = bk.where(lower_identity, one, one * eta)
    return aL, zero, aU, bU


# ---- ParamRamp ----------------------------------------------------------------------------------
def paramramp_lines(bk, l, u, r, eta: float, strategy: str):
    """ParamRamp(eta, r): six statuses; ``r`` broadcasts against ``l``."""
    b = r * (1.0 - eta)
    f = lambda z: z * eta + bk.minimum(bk.relu(z), r) * (1.0 - eta)  # noqa: E731
    if strategy == "constant":
        return _constant_lines(bk, f, l, u)
    one, zero = l * 0 + 1.0, l * 0
    # exclusive statuses (a degenerate interval at 0 or at r is dead, not alive)
    left_dead = u <= 0
    right_dead = (l >= r) & ~left_dead
    alive = (l >= 0) & (u <= r) & ~left_dead & ~right_dead
    left_unstable = (l < 0) & (u > 0) & (u <= r)
    right_unstable = (l >= 0) & (l < r) & (u > r)
    unstable = (l < 0) & (u > r)
    cs, cb = _chord(bk, f, l, u)  # as an upper line
    _, cb_low = _chord(bk, f, l, u, anchor="lower")  # the same chord as a lower line
    eta1 = one * eta
    bb = zero + b
    if strategy == "tight":
        aU = bk.where(left_dead, eta1, bk.where(left_unstable, cs, bk.where(alive, one, eta1)))
        bU = bk.where(left_dead, zero, bk.where(left_unstable, cb, bk.where(alive, zero, bb)))
        aL = bk.where(right_unstable, cs, bk.where(alive, one, eta1))
        bL = bk.where(right_unstable, cb_low, bk.where(right_dead, bb, zero))
        return aL, bL, aU, bU
    if strategy != "adaptive":
        raise ValueError(f"unknown strategy {strategy!r}")
    big_right = (u - r) > (r - l)
    # upper lines
    s_lr = (r - l * eta) / bk.maximum(r - l, GAP)  # through (l, eta l) and (r, r)
    b_lr = r - s_lr * r
    aU = bk.where(left_dead, eta1, bk.where(left_unstable, cs, bk.where(alive, one, bk.where(right_dead, eta1,
                  bk.where(big_right, eta1, bk.where(right_unstable, one, s_lr))))))
    bU = bk.where(left_dead, zero, bk.where(left_unstable, cb, bk.where(alive, zero, bk.where(right_dead, bb,
                  bk.where(big_right, bb, bk.where(right_unstable, zero, b_lr))))))
    # lower lines
    big_left = u > -l
    s_0u = f(u) / bk.maximum(u, GAP)  # through (0, 0) and (u, f(u))
    aL = bk.where(left_dead, eta1, bk.where(left_unstable, bk.where(big_left, one, eta1), bk.where(alive, one,
                  bk.where(right_dead, eta1, bk.where(right_unstable, cs, bk.where(big_left, s_0u, eta1))))))
    bL = bk.where(right_dead, bb, bk.where(right_unstable, cb_low, zero))
    return aL, bL, aU, bU


# ---- Sigmoid / Tanh (CROWN's lines for S-shaped functions) --------------------------------------
def _s_upper(bk, f, df, l, u, iters=30):
    """Upper line of an S-shaped f (convex for z < 0, concave for z > 0) on [l, u]."""
    cs, cb = _chord(bk, f, l, u)
    # concave part only (l >= 0): tangent at the midpoint
    m = (l + u) / 2
    ts, tb = df(m), f(m) - df(m) * m
    # mixed: tangent at d in [0, u] that passes through (l, f(l)); chord if none exists
    tangent_at = lambda d: f(d) + df(d) * (l - d)  # noqa: E731  value at l of the tangent at d
    use_chord = tangent_at(bk.maximum(u, 0.0)) <= f(l)
    lo, hi = l * 0, bk.maximum(u, 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = tangent_at(mid) >= f(l)
        hi = bk.where(above, mid, hi)
        lo = bk.where(above, lo, mid)
    d = hi  # tangent_at(hi) >= f(l): the line is >= f at l
    ms, mb = df(d), f(d) - df(d) * d
    aU = bk.where(u <= 0, cs, bk.where(l >= 0, ts, bk.where(use_chord, cs, ms)))
    bU = bk.where(u <= 0, cb, bk.where(l >= 0, tb, bk.where(use_chord, cb, mb)))
    return aU, bU


def s_shaped_lines(bk, l, u, kind: str, strategy: str):
    if kind == "Sigmoid":
        f, c = bk.sigmoid, 0.5
        df = lambda z: bk.sigmoid(z) * (1 - bk.sigmoid(z))  # noqa: E731
    else:
        f, c = bk.tanh, 0.0
        df = lambda z: 1 - bk.tanh(z) ** 2  # noqa: E731
    if strategy == "constant":
        return _constant_lines(bk, f, l, u)
    aU, bU = _s_upper(bk, f, df, l, u)
    # f(z) = 2c - f(-z): an upper line (a, b) on [-u, -l] gives the lower line a z + 2c - b on [l, u]
    aLm, bLm = _s_upper(bk, f, df, -u, -l)
    return aLm, 2 * c - bLm, aU, bU


def activation_lines(bk, node, l, u, strategy: str):
    """Bounding lines for the elementwise activation ``node`` given its input bounds."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose {', '.join(STRATEGIES)}")
    op = node.op
    if op == "Relu":
        return leaky_relu_lines(bk, l, u, 0.0, strategy)
    if op == "LeakyRelu":
        return leaky_relu_lines(bk, l, u, float(node.attrs["alpha"]), strategy)
    if op == "ParamRamp":
        r = bk.clip_min(params_as(bk, node, "r", l.dtype), 1e-4)
        return paramramp_lines(bk, l, u, r, float(node.attrs["eta"]), strategy)
    if op in ("Sigmoid", "Tanh"):
        return s_shaped_lines(bk, l, u, op, strategy)
    raise KeyError(f"no bounding lines for op {op}")
