"""ParamRamp(eta, r): ``f(z) = eta z + (1 - eta) min(max(z, 0), r)``, ``r`` per neuron.

The ONNX custom op ``onnxverify::ParamRamp`` (version 1; inputs ``X``, ``R``; attribute
``eta``) with its model-local function body (:func:`paramramp_function`: standard ops only,
so stock onnxruntime runs it), the IR rule with its six neuron statuses and bounding lines
(PAPER_NOTES.md §1), and the training tie-in. ``r`` is clamped to ``>= R_MIN`` everywhere
(:func:`bend`). The export side (torch module, onnx2torch converter, attaching the function
to a model) lives in :mod:`onnxverify.converters`.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .base import Example, TorchTie, find_submodule, onnx_op
from .generic import ElementwiseRule
from .importing import fail
from .lines import GAP, chord, constant_lines, per_bounds
from .registry import register

DOMAIN = "onnxverify"
OP_TYPE = "ParamRamp"
VERSION = 1
#: lower clamp applied to R in every forward pass (ONNX function, torch module, IR)
R_MIN = 1e-4

PARAMRAMP_STATUSES = ("left dead", "left unstable", "alive", "right unstable", "right dead", "unstable")


def bend(bk, r, dtype=None):
    """The effective bend points ``max(r, R_MIN)`` as a backend array."""
    return bk.clip_min(bk.const(r, dtype), R_MIN)


def paramramp_lines(bk, l, u, r, eta: float, strategy: str):
    """Bounding lines on ``[l, u]``; ``r`` (already clamped) broadcasts against ``l``."""
    b = r * (1.0 - eta)
    f = lambda z: z * eta + bk.minimum(bk.relu(z), r) * (1.0 - eta)  # noqa: E731
    if strategy == "constant":
        return constant_lines(bk, f, l, u)
    one, zero = l * 0 + 1.0, l * 0
    # exclusive statuses (a degenerate interval at 0 or at r is dead, not alive)
    left_dead = u <= 0
    right_dead = (l >= r) & ~left_dead
    alive = (l >= 0) & (u <= r) & ~left_dead & ~right_dead
    left_unstable = (l < 0) & (u > 0) & (u <= r)
    right_unstable = (l >= 0) & (l < r) & (u > r)
    cs, cb = chord(bk, f, l, u)  # as an upper line
    _, cb_low = chord(bk, f, l, u, anchor="lower")  # the same chord as a lower line
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
    s_lr = (r - l * eta) / bk.maximum(r - l, GAP)  # through (l, eta l) and (r, r)
    b_lr = r - s_lr * r
    aU = bk.where(left_dead, eta1, bk.where(left_unstable, cs, bk.where(alive, one, bk.where(right_dead, eta1,
                  bk.where(big_right, eta1, bk.where(right_unstable, one, s_lr))))))
    bU = bk.where(left_dead, zero, bk.where(left_unstable, cb, bk.where(alive, zero, bk.where(right_dead, bb,
                  bk.where(big_right, bb, bk.where(right_unstable, zero, b_lr))))))
    big_left = u > -l
    s_0u = f(u) / bk.maximum(u, GAP)  # through (0, 0) and (u, f(u))
    aL = bk.where(left_dead, eta1, bk.where(left_unstable, bk.where(big_left, one, eta1), bk.where(alive, one,
                  bk.where(right_dead, eta1, bk.where(right_unstable, cs, bk.where(big_left, s_0u, eta1))))))
    bL = bk.where(right_dead, bb, bk.where(right_unstable, cb_low, zero))
    return aL, bL, aU, bU


def paramramp_status(l, u, r) -> np.ndarray:
    """Status codes (indices into :data:`PARAMRAMP_STATUSES`); ``r`` broadcasts against ``l``
    and is clamped to ``>= R_MIN`` like in the op. Where two definitions meet (``l = u = 0``,
    ``l = u = r``) the dead statuses win."""
    l, u = np.asarray(l), np.asarray(u)
    r = np.maximum(np.asarray(r, dtype=np.float64), R_MIN)
    left_dead = u <= 0
    right_dead = (l >= r) & ~left_dead
    rest = ~(left_dead | right_dead)  # here u > 0 and l < r
    left_unstable = rest & (l < 0) & (u <= r)
    alive = rest & (l >= 0) & (u <= r)
    right_unstable = rest & (l >= 0) & (u > r)
    conds = [left_dead, left_unstable, alive, right_unstable, right_dead]
    return np.select(conds, [0, 1, 2, 3, 4], default=5).astype(np.int8)


# ---- the ONNX function body ----------------------------------------------------------------------
def _const_ref(output: str, attr: str) -> onnx.NodeProto:
    """``Constant`` whose ``value_float`` refers to the calling node's attribute ``attr``."""
    node = helper.make_node("Constant", [], [output])
    a = onnx.AttributeProto()
    a.name, a.ref_attr_name, a.type = "value_float", attr, onnx.AttributeProto.FLOAT
    node.attribute.append(a)
    return node


def paramramp_function(opset: int = 17) -> onnx.FunctionProto:
    """The model-local function defining ``onnxverify::ParamRamp`` v1 against default-domain
    ``opset``: ``Y = eta*X + (1-eta)*Min(Relu(X), Max(R, 1e-4))`` with float32 constants.
    Valid for opsets 13..21 (and later ones that keep these ops unchanged)."""
    opset = int(opset)
    if opset < 1:
        raise ValueError(f"invalid opset {opset}")
    nodes = [
        _const_ref("eta_t", "eta"),
        helper.make_node("Constant", [], ["one"], value_float=1.0),
        helper.make_node("Constant", [], ["r_min"], value_float=float(R_MIN)),
        helper.make_node("Sub", ["one", "eta_t"], ["one_m_eta"]),
        helper.make_node("Max", ["R", "r_min"], ["r_c"]),
        helper.make_node("Relu", ["X"], ["x_pos"]),
        helper.make_node("Min", ["x_pos", "r_c"], ["x_ramp"]),
        helper.make_node("Mul", ["eta_t", "X"], ["lin"]),
        helper.make_node("Mul", ["one_m_eta", "x_ramp"], ["ramp"]),
        helper.make_node("Add", ["lin", "ramp"], ["Y"]),
    ]
    return helper.make_function(
        DOMAIN, OP_TYPE, inputs=["X", "R"], outputs=["Y"], nodes=nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=[],
        attribute_protos=[helper.make_attribute("eta", 0.0)],  # default value
        doc_string=("ParamRamp(eta, r): Y = eta*X + (1-eta)*Min(Max(X,0), Max(R,1e-4)); "
                    "R per neuron (sample shape of X), broadcast over the batch axis."))


# ---- the rule --------------------------------------------------------------------------------------
class ParamRampTie(TorchTie):
    kind = "paramramp"

    def __init__(self, module, shape):
        super().__init__(module)
        self.shape = tuple(shape)

    def params(self):
        r = self.module.r
        return {"r": r if tuple(r.shape) == self.shape else r.expand(self.shape)}

    def attrs(self):
        return {"eta": float(self.module.eta)}


def _ramp_example(shape, eta):
    rng = np.random.default_rng(0)
    r = rng.uniform(0.05, 1.5, shape[1:]).astype(np.float32)
    return Example((shape, r), {"eta": eta}, low=-1.0, high=2.0)


@register
class ParamRamp(ElementwiseRule):
    """params: ``r`` (sample shape); attrs: ``eta`` in [0, 1]."""

    op = "ParamRamp"
    monotone = True
    nonneg_slopes = True
    statuses = PARAMRAMP_STATUSES

    def forward(self, bk, node, x):
        eta = node.attrs["eta"]
        return x * eta + bk.minimum(bk.relu(x), bend(bk, node.params["r"], x.dtype)) * (1.0 - eta)

    def lines(self, bk, node, l, u, strategy):
        return paramramp_lines(bk, l, u, bend(bk, node.params["r"], l.dtype), float(node.attrs["eta"]), strategy)

    def derivative(self, bk, node, x, y):
        r = bend(bk, node.params["r"], x.dtype)
        return bk.where((x >= 0) & (x <= r), x * 0 + 1.0, x * 0 + node.attrs["eta"])

    def undecided(self, bk, node, lo, hi, index=0):
        r = bend(bk, node.params["r"], lo.dtype)
        return ~((hi <= 0) | ((lo >= 0) & (hi <= r)) | (lo >= r))

    def status_codes(self, node, lo, hi):
        r = node.params["r"]
        return paramramp_status(lo, hi, np.asarray(r.detach().cpu().numpy() if hasattr(r, "detach") else r))

    # -- optimisable lines (alpha-CROWN) and splits (branch and bound) ------------------------------
    #: free-line parameters per neuron: a lower slope and an upper slope
    alpha_count = 2

    def alpha_init(self, bk, node, l, u, strategy):
        """Parameters ``(a_lower, a_upper)``, each ``(B, *shape)`` in ``[0, 1]``, whose lines
        are ``strategy``'s for every status (``constant`` starts where ``tight`` does)."""
        zero = l * 0
        if strategy != "adaptive":
            return zero, zero
        r = bend(bk, node.params["r"], l.dtype)
        return bk.where(u > -l, zero + 1.0, zero), bk.where((u - r) > (r - l), zero, zero + 1.0)

    def alpha_lines(self, bk, node, l, u, alphas, cache=None):
        """Lines on ``[l, u]`` (``(B, *shape)``) for ``alphas = (a_lo, a_hi)`` (each ``(B, K,
        *shape)`` in ``[0, 1]``): ``aL``/``bL``/``aU``/``bU`` ``(B, K, *shape)``. With ``f`` of
        slope ``eta``, 1, ``eta`` on ``z < 0``, ``[0, r]``, ``z > r``:

        * lower lines ``s z`` through the origin: left unstable ``s in [eta, 1]`` (``eta z <=
          s z`` for ``z < 0``, ``s z <= z`` for ``0 <= z <= u <= r``); unstable ``s in [eta,
          f(u)/u]`` (``f`` is concave on ``[0, u]``, so the chord ``f(u)/u z`` is below it there);
        * upper lines ``r + s (z - r)`` through ``(r, r)``: right unstable ``s in [eta, 1]``
          (above ``z`` left of ``r``, above ``r + eta (z - r)`` right of it); unstable ``s in
          [eta, s_lr]`` with ``s_lr = (r - eta l) / (r - l)`` (the chord of the convex piece
          ``[l, r]`` from ``(r, r)``; a smaller slope stays above it left of ``r``);
        * the other lines of the six statuses are fixed (``tight``'s: exact or chords).

        ``s = lo + alpha (hi - lo)``, so every ``alpha`` in ``[0, 1]`` gives sound lines.
        ``cache``: see :func:`~.lines.per_bounds`."""
        a_lo, a_hi = alphas
        eta = float(node.attrs["eta"])
        aL, bL, aU, bU, r1, free_lo, free_up, w_lo, w_up = per_bounds(
            cache, node, l, u, lambda: self._fixed_lines(bk, node, l, u, eta))
        s_low = a_lo * w_lo + eta
        s_up = a_hi * w_up + eta
        zero = s_low * 0
        return (bk.where(free_lo, s_low, aL), bL + zero, bk.where(free_up, s_up, aU),
                bk.where(free_up, r1 - s_up * r1, bU))

    @staticmethod
    def _fixed_lines(bk, node, l, u, eta):
        """What :meth:`alpha_lines` needs that does not depend on the parameters (``(B, 1,
        *shape)``): ``tight``'s lines (the lower intercept already 0 where the lower slope is
        free), ``r``, the masks of free lower / upper slopes and the widths of their ranges."""
        r = bend(bk, node.params["r"], l.dtype)
        aL, bL, aU, bU = (v[:, None] for v in paramramp_lines(bk, l, u, r, eta, "tight"))
        r1 = (l * 0 + r)[:, None]
        lu, uu = l[:, None], u[:, None]
        left_unstable = (lu < 0) & (uu > 0) & (uu <= r1)
        right_unstable = (lu >= 0) & (lu < r1) & (uu > r1)
        unstable = (lu < 0) & (uu > r1)
        f_u = uu * eta + bk.minimum(bk.relu(uu), r1) * (1.0 - eta)
        s_hi_low = bk.where(unstable, f_u / bk.maximum(uu, GAP), uu * 0 + 1.0)
        s_lr = (r1 - lu * eta) / bk.maximum(r1 - lu, GAP)
        s_hi_up = bk.where(unstable, s_lr, uu * 0 + 1.0)
        free_lo = left_unstable | unstable
        free_up = right_unstable | unstable
        return aL, bk.where(free_lo, bL * 0, bL), aU, bU, r1, free_lo, free_up, s_hi_low - eta, s_hi_up - eta

    splittable = True

    def branch_points(self, bk, node, l):
        """Split thresholds (arrays broadcastable to ``l``): the op is linear between them."""
        return [l * 0, l * 0 + bend(bk, node.params["r"], l.dtype)]

    @onnx_op(OP_TYPE, since=VERSION, domain=DOMAIN,
             examples=(_ramp_example((2, 6), 0.0), _ramp_example((1, 2, 3, 3), 0.1), _ramp_example((3, 5), 0.7)))
    def convert(self, ctx, node, attrs, label):
        if len(node.input) != 2 or not node.input[1]:
            fail(label, "ParamRamp", f"expects 2 inputs (X, R), got {len(node.input)}")
        x, r = node.input[0], node.input[1]
        if not ctx.is_const(r):
            fail(label, "ParamRamp", "R must be a constant (an initializer)")
        eta = float(attrs.get("eta", 0.0))
        if not 0.0 <= eta <= 1.0:
            fail(label, "ParamRamp", f"eta={eta} must lie in [0, 1]")
        R = ctx.const(r).astype(np.float32)
        shape = ctx.shape_of(x)
        if R.ndim == len(shape) + 1 and R.shape[0] == 1:
            R = R[0]
        try:
            R = np.ascontiguousarray(np.broadcast_to(R, shape))
        except ValueError:
            fail(label, "ParamRamp", f"R has shape {ctx.const(r).shape}, expected the sample shape {shape} of X")
        ctx.add(node.output[0], "ParamRamp", [ctx.computed(x)], {"r": R}, {"eta": eta}, source=label)

    def onnx_function(self, opset: int):
        """The function body stock onnxruntime runs for this custom op."""
        return paramramp_function(opset)

    def torch_tie(self, node, submodule):
        m = find_submodule(submodule, lambda mod: hasattr(mod, "r") and hasattr(mod, "eta"))
        if m is None:
            raise ValueError(f"ParamRamp node {node.source}: no onnx2torch ParamRamp module found")
        return ParamRampTie(m, node.shape)
