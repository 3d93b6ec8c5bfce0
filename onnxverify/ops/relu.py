"""The ReLU family: ``Relu`` and ``LeakyRelu(alpha)`` (ReLU is ``alpha = 0``).

Statuses: dead ``u <= 0``, alive ``l >= 0``, unstable ``l < 0 < u``. Bounding lines
(PAPER_NOTES.md §1): upper ``eta z`` (dead), ``z`` (alive), the chord (unstable); lower ``z``
(alive; adaptive: also unstable with ``u > -l``), else ``eta z``.
"""
from __future__ import annotations

import numpy as np

from .base import Example, TorchTie, find_submodule, onnx_op, unary_converter
from .generic import ElementwiseRule
from .importing import fail
from .lines import chord, constant_lines, per_bounds
from .registry import register

RELU_STATUSES = ("dead", "unstable", "alive")


def leaky_relu_lines(bk, l, u, eta: float, strategy: str):
    """Bounding lines of ``LeakyReLU(eta)`` on ``[l, u]`` (see the module docstring)."""
    f = lambda z: bk.where(z >= 0, z, z * eta)  # noqa: E731
    if strategy == "constant":
        return constant_lines(bk, f, l, u)
    one = l * 0 + 1.0
    zero = l * 0
    dead = u <= 0
    alive = (l >= 0) & ~dead
    unstable = ~(alive | dead)
    cs, cb = chord(bk, f, l, u)
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


def relu_status(l, u) -> np.ndarray:
    """Status codes (indices into :data:`RELU_STATUSES`) for bounds ``l, u`` (any equal shapes)."""
    l, u = np.asarray(l), np.asarray(u)
    dead, alive = u <= 0, (l >= 0) & (u > 0)
    return np.select([dead, alive], [0, 2], default=1).astype(np.int8)


EXAMPLES = (Example(((2, 7),)), Example(((1, 2, 3, 4),), low=-1.0, high=1.0))


@register
class Relu(ElementwiseRule):
    op = "Relu"
    monotone = True
    nonneg_slopes = True
    statuses = RELU_STATUSES

    def slope(self, node) -> float:
        """The slope of the negative side."""
        return 0.0

    def forward(self, bk, node, x):
        return bk.relu(x)

    def lines(self, bk, node, l, u, strategy):
        return leaky_relu_lines(bk, l, u, self.slope(node), strategy)

    def derivative(self, bk, node, x, y):
        return bk.where(x > 0, x * 0 + 1.0, x * 0 + self.slope(node))

    def undecided(self, bk, node, lo, hi, index=0):
        return (lo < 0) & (hi > 0)

    def status_codes(self, node, lo, hi):
        return relu_status(lo, hi)

    # -- optimisable lines (alpha-CROWN) and splits (branch and bound) ------------------------------
    #: free-line parameters per neuron: the lower slope of an unstable neuron
    alpha_count = 1

    def alpha_init(self, bk, node, l, u, strategy):
        """Parameters ``(B, *shape)`` in ``[0, 1]`` whose lines are ``strategy``'s (``constant``
        has no line of the family through the origin: it starts where ``tight`` does)."""
        zero = l * 0
        return (bk.where(u > -l, zero + 1.0, zero) if strategy == "adaptive" else zero,)

    def alpha_lines(self, bk, node, l, u, alphas, cache=None):
        """Lines ``(aL, bL, aU, bU)`` on ``[l, u]`` (``(B, *shape)``) for parameters ``alphas``
        (one ``(B, K, *shape)`` array in ``[0, 1]``): one line per row and neuron, ``aL``
        ``(B, K, *shape)``, the others ``(B, 1, *shape)``. Unstable neurons get the lower line
        ``s z`` with ``s = eta + alpha (1 - eta)``; ``eta z <= s z <= z`` on ``z <= 0`` and
        ``z >= 0`` respectively shows it is below ``f`` for every ``alpha`` in ``[0, 1]``. The
        upper line is the chord (already the best one); decided neurons keep their exact line.
        ``cache``: see :func:`~.lines.per_bounds`."""
        (a,) = alphas
        eta = self.slope(node)

        def fixed():  # everything but the free slopes: once per bounds (see per_bounds)
            aL, bL, aU, bU = leaky_relu_lines(bk, l, u, eta, "tight")
            return aL[:, None], bL[:, None], aU[:, None], bU[:, None], ((l < 0) & (u > 0))[:, None]

        aL, bL, aU, bU, unstable = per_bounds(cache, node, l, u, fixed)
        return bk.where(unstable, a * (1.0 - eta) + eta, aL), bL, aU, bU

    splittable = True

    def branch_points(self, bk, node, l):
        """Split thresholds (arrays broadcastable to ``l``): the op is linear between them."""
        return [l * 0]

    def split_line(self, node, side: int):
        """``(a, b)``: the op itself, ``a z + b``, on side ``side`` of its split at 0 (+1: ``z >=
        0``, -1: ``z <= 0``), for every neuron (no other branch point)."""
        return (1.0, 0.0) if side > 0 else (self.slope(node), 0.0)

    convert = unary_converter("Relu", since=1, examples=EXAMPLES)


class LeakyTie(TorchTie):
    kind = "leaky"

    def attrs(self):
        return {"alpha": float(self.module.negative_slope)}


@register
class LeakyRelu(Relu):
    """attrs: ``alpha`` (slope for negative inputs, >= 0 for monotonicity)."""

    op = "LeakyRelu"

    def slope(self, node) -> float:
        return float(node.attrs["alpha"])

    def forward(self, bk, node, x):
        return bk.where(x >= 0, x, x * node.attrs["alpha"])

    @onnx_op("LeakyRelu", since=1, examples=EXAMPLES + (Example(((2, 6),), {"alpha": 0.3}),))
    def convert_leaky(self, ctx, node, attrs, label):
        alpha = float(attrs.get("alpha", 0.01))
        if alpha < 0:
            fail(label, "LeakyRelu", f"alpha={alpha} < 0 makes the activation non-monotone (unsupported)")
        ctx.add(node.output[0], "LeakyRelu", [ctx.computed(node.input[0])], attrs={"alpha": alpha}, source=label)

    def torch_tie(self, node, submodule):
        from torch import nn

        m = find_submodule(submodule, nn.LeakyReLU)
        return LeakyTie(m) if m is not None else None
