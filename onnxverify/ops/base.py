"""The op protocol: one :class:`OpRule` object per IR op, every rule of the op in one place.

An IR node (``onnxverify.ir.Node``) names its op; the registry (:mod:`.registry`) maps the
name to a rule object, which the engines call. A rule says:

* how ONNX nodes become this op (converter methods marked with :func:`onnx_op`, each with
  the ONNX op type, domain and opset version it accepts, and small :class:`Example` nodes
  for the registry-driven contract tests);
* ``forward`` -- its value on a batch;
* ``interval`` -- its interval rule (IBP);
* ``relax`` -- for a nonlinear op, its linear relaxation given its input bounds and a
  bounding-line strategy; ``undecided`` -- which neurons of an input are not linear on their
  interval (only those need backward passes); ``status_codes`` -- neuron statuses;
* ``forward_linear`` / ``backward_linear`` / ``backward_window`` -- the forward (LBP) and
  backward (CROWN) linear steps, on dense coefficients or on a spatial window of them;
  ``backward_patches`` -- the backward step on :class:`~onnxverify.ops.patches.Patches`
  (per-row receptive-field windows; default: the dense step, so a new op needs no patches
  code);
* ``vjp`` -- the vector-Jacobian product (attacks);
* properties as attributes (``affine``, ``elementwise``, ``monotone``, ``windowed``,
  ``mixes``, ``statuses``) that the engines read instead of testing op names.

Base classes give the generic rules, so a simple op is a page: :class:`AffineRule` derives
the interval, both linear steps and the VJP from ``apply`` / ``apply_abs`` / ``adjoint``;
:class:`ElementwiseRule` derives the interval of a monotone function, both linear steps
from its bounding ``lines`` and the VJP from ``derivative``.

Shapes: ``B`` batch, ``K`` rows of a backward pass, ``n0`` flattened input size. Forward
maps of a tensor ``(B, *shape)`` are :class:`Maps`: coefficients ``(B, n0, *shape)`` and
constants ``(B, *shape)``. Backward coefficients are ``(B, K, *shape)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: bounding-line strategies of the linear methods (PAPER_NOTES.md §1)
STRATEGIES = ("constant", "tight", "adaptive")
DEFAULT_STRATEGY = "adaptive"


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        from ..errors import InputError

        raise InputError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    return strategy


# ---- import-side declarations -----------------------------------------------------------------
@dataclass
class Example:
    """A small ONNX node of one converter, built by the contract tests as a one-node model.

    ``inputs``: per ONNX input, a shape tuple *with* the batch axis (a computed input), an
    array (a constant initializer), or None (an omitted optional input). ``attrs``: the ONNX
    attributes. ``low``/``high``: the range of computed inputs. ``opsets``: the opset versions
    to build it at (default: the converter's first version, clipped to 8..21, and 21).
    ``outputs``: the node's number of outputs (TopK has two); ``output``: the one that is the
    model's output.
    """

    inputs: tuple
    attrs: dict = field(default_factory=dict)
    low: float = -2.0
    high: float = 2.0
    opsets: tuple | None = None
    outputs: int = 1
    output: int = 0


def onnx_op(op_type: str, since: int = 1, domain: str = "", examples=(), yields_constant: bool = False):
    """Mark a rule method ``convert(self, ctx, node, attrs, label)`` as the converter of ONNX
    ``op_type`` (``domain``) for opset versions ``>= since`` (up to the next registered
    version). ``yields_constant``: the node's outputs are constants even on computed inputs
    (e.g. ``Shape``)."""

    def mark(fn):
        fn.__dict__.setdefault("_onnx_ops", []).append(
            {"op_type": op_type, "since": int(since), "domain": domain, "examples": tuple(examples),
             "yields_constant": yields_constant})
        return fn

    return mark



def unary_converter(op_type: str, since: int = 1, domain: str = "", examples=()):
    """The converter of an ONNX op with one computed input and nothing else to read (no
    attributes, no constants) that maps to the rule's own IR op: in the rule's class,
    ``convert = unary_converter("Exp", examples=...)`` (marked as :func:`onnx_op` is)."""

    @onnx_op(op_type, since=since, domain=domain, examples=examples)
    def convert(self, ctx, node, attrs, label):
        ctx.add(node.output[0], self.op, [ctx.computed(node.input[0])], source=label)

    return convert

# ---- forward maps ---------------------------------------------------------------------------------
@dataclass
class Maps:
    """Forward linear bounds of a tensor ``y (B, *shape)`` in terms of the flattened input ``x``:
    ``Lk . x + Lc <= y <= Uk . x + Uc`` with ``Lk, Uk (B, n0, *shape)``, ``Lc, Uc (B, *shape)``.
    While the bounds are exact (no nonlinear op crossed yet), ``Lk is Uk`` and ``Lc is Uc``."""

    Lk: object
    Lc: object
    Uk: object
    Uc: object

    @property
    def exact(self) -> bool:
        return self.Lk is self.Uk and self.Lc is self.Uc

    def fold(self, bk, k):
        """Coefficients ``(B, n0, *shape)`` -> ``(B * n0, *shape)``: a batch of images."""
        return bk.reshape(k, (-1,) + tuple(k.shape[2:]))


def unfold(bk, k, B: int, n0: int):
    """``(B * n0, *shape)`` -> ``(B, n0, *shape)``."""
    return bk.reshape(k, (B, n0) + tuple(k.shape[1:]))


# ---- backward steps ---------------------------------------------------------------------------------
def each_side(AL, AU, side):
    """The two passes of a backward step: ``side(A, upper)`` maps the coefficients ``A`` of the
    lower (``upper=False``) or the upper bound to ``(coefficients, bias)`` -- ``coefficients``
    one array per input of the op, ``bias`` ``(B, K)`` or None. A side whose ``A`` is None
    stays None. Returns what :meth:`OpRule.backward_linear` returns: one ``(AL_i, AU_i)``
    per input and ``(bias_L, bias_U)``."""
    results = [None if A is None else side(A, s == 1) for s, A in enumerate((AL, AU))]
    n = len(next(r for r in results if r is not None)[0])
    coefs = [[None] * n if r is None else list(r[0]) for r in results]
    return list(zip(*coefs)), tuple(None if r is None else r[1] for r in results)


# ---- the protocol ---------------------------------------------------------------------------------
class OpRule:
    """Base class of every rule. ``op`` is the IR op name the registry files it under."""

    op = ""
    #: the output is an affine function of the inputs (linear steps are exact)
    affine = False
    #: one input, same shape as the output, position i depends on input position i only
    elementwise = False
    #: non-decreasing in every input: the interval maps lower to lower, upper to upper
    monotone = False
    #: the backward step can work on a spatial window of ``(C, H, W)`` coefficients
    windowed = False
    #: :meth:`backward_patches` keeps patches as patches (a pass from this node's neurons
    #: may start as identity patches); False: the default step goes dense
    patches = False
    #: output positions combine several input positions (IBP is then not exact)
    mixes = False
    #: neuron status names (``stats``), or None for ops without statuses
    statuses: tuple | None = None
    #: branch and bound may split the (single) input of this op (:meth:`split_points`)
    splittable = False

    # -- evaluation --------------------------------------------------------------------------------
    def forward(self, bk, node, *xs):
        """``xs``: one ``(B, *in_shape)`` array per input -> ``(B, *node.shape)``."""
        raise NotImplementedError(f"{self.op}: forward")

    def interval(self, bk, node, *bounds):
        """``bounds``: one ``(lower, upper)`` pair per input -> ``(lower, upper)`` of the output.
        Default for monotone ops: the values at the endpoints."""
        if self.monotone:
            return self.forward(bk, node, *[lo for lo, _ in bounds]), self.forward(bk, node, *[hi for _, hi in bounds])
        raise NotImplementedError(f"{self.op}: interval")

    # -- relaxation (nonlinear ops) --------------------------------------------------------------------
    def relax(self, bk, node, bounds, strategy: str):
        """The linear relaxation of the op given its inputs' bounds (a list of ``(l, u)``): an
        object ``forward_linear`` and ``backward_linear`` understand."""
        raise NotImplementedError(f"{self.op}: relax")

    def undecided(self, bk, node, lo, hi, index: int = 0):
        """Bool mask ``(B, *in_shape)`` of the neurons of input ``index`` whose output this op
        does not follow linearly on ``[lo, hi]`` (they need backward passes), or None when every
        neuron is decided (affine ops). Default for nonlinear ops: every neuron."""
        if self.affine:
            return None
        return (lo < hi) | (lo >= hi)

    def split_points(self, bk, node, l, u):
        """Thresholds ``t`` (arrays broadcastable to ``l``) at which branch and bound may
        split this op's input, bounded by ``l, u (B, *shape)``, into ``<= t`` and ``>= t``
        (:attr:`splittable` rules only). Default: the rule's ``branch_points``, where the op
        is piecewise linear (each piece is then exact)."""
        return self.branch_points(bk, node, l)

    def status_codes(self, node, lo, hi) -> np.ndarray:
        """Indices into :attr:`statuses` per neuron, from NumPy bounds of the op's input."""
        raise NotImplementedError(f"{self.op}: statuses")

    # -- linear steps --------------------------------------------------------------------------------
    def forward_linear(self, bk, node, relax, maps: list) -> Maps:
        """Forward linear step (LBP): the :class:`Maps` of each input -> the output's."""
        raise NotImplementedError(f"{self.op}: forward linear step")

    def backward_linear(self, bk, node, step, AL, AU):
        """Backward linear step (CROWN): coefficients ``AL``/``AU`` ``(B, K, *node.shape)`` of the
        lower/upper bound (``AU`` may be None) -> ``(coefficients, (bias_L, bias_U))`` where
        ``coefficients`` has one ``(AL_i, AU_i)`` per input and the biases are ``(B, K)`` (or
        None: no constant term). ``step`` gives ``relax``, ``offset``, ``in_shapes``."""
        raise NotImplementedError(f"{self.op}: backward linear step")

    def backward_window(self, bk, node, step, AL, AU, win):
        """:meth:`backward_linear` on the window ``win = (r0, r1, c0, c1)`` of a ``(C, H, W)``
        node (coefficients ``(B, K, C, r1 - r0, c1 - c0)``): returns one ``(AL_i, AU_i, win_i)``
        per input and the biases. Only for rules with ``windowed = True``."""
        raise NotImplementedError(f"{self.op}: windowed backward step")

    def backward_patches(self, bk, node, step, PL, PU):
        """:meth:`backward_linear` on :class:`~onnxverify.ops.patches.Patches` ``PL``/``PU``
        (``PU`` may be None, or ``PL`` itself when both passes share coefficients) of a
        ``(C, H, W)`` node: one ``(PL_i, PU_i)`` per input -- patches, or dense
        ``(B, K, *in_shape)`` arrays -- and the ``(B, K)`` biases. Default: the dense step on
        :meth:`~onnxverify.ops.patches.Patches.dense` coefficients (rules with
        ``patches = True`` override it)."""
        AL = PL.dense(bk)
        AU = None if PU is None else (AL if PU is PL else PU.dense(bk))
        return self.backward_linear(bk, node, step, AL, AU)

    # -- gradient --------------------------------------------------------------------------------------
    def vjp(self, bk, node, g, xs, y) -> list:
        """Cotangents of the inputs: ``g (B, *node.shape)``, ``xs`` the input values, ``y`` the
        output value -> one ``(B, *in_shape)`` array per input."""
        raise NotImplementedError(f"{self.op}: vjp")

    # -- engine helpers ------------------------------------------------------------------------------
    def kernel_size(self, node) -> int:
        """Values each output reads from one input channel (memory estimates of passes)."""
        return 1

    def channel_affine(self, node):
        """``(scale, shift)`` when the op is an affine map per channel that a preceding Linear /
        Conv can absorb exactly (see :func:`onnxverify.onnx.passes.fuse_affine`), else None."""
        return None

    def absorb_channel_affine(self, node, scale, shift):
        """New params of this node after absorbing ``y * scale + shift`` on its output (scale
        and shift broadcast to ``node.shape``), or None when it cannot do so exactly."""
        return None

    def torch_tie(self, node, submodule):
        """Training tie-in: a :class:`TorchTie` linking this IR node to the onnx2torch
        ``submodule`` built from the same ONNX node, or None (nothing trainable)."""
        return None


def scaled_params(params, scale, shift):
    """``{"weight", "bias"}`` of a Linear / Conv whose output ``y`` is replaced by
    ``y * scale + shift``: ``scale``, ``shift`` ``(O,)`` per output unit (the weight's first
    axis); computed in float64, returned as float32."""
    w = params["weight"].astype(np.float64)
    w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    b = params["bias"].astype(np.float64) * scale + shift
    return {"weight": w.astype(np.float32), "bias": b.astype(np.float32)}


class TorchTie:
    """How a trainable IR node follows its torch module (:mod:`onnxverify.training.tied`).

    ``module``: the torch module; :meth:`params` returns the IR parameters computed from the
    module's current tensors (autograd flows), :meth:`attrs` the IR attributes (e.g. a
    scheduled leak slope). ``kind`` names the tie for the trainer (``"paramramp"``, ``"leaky"``,
    ``"bn"``, ...)."""

    kind = ""

    def __init__(self, module):
        self.module = module

    def params(self) -> dict:
        return {}

    def attrs(self) -> dict:
        return {}


def find_submodule(module, match):
    """The module itself or its single descendant that ``match`` accepts (a class, or a
    predicate on modules; onnx2torch may wrap the module that matters)."""
    if module is None:
        return None
    test = match if not isinstance(match, type) else (lambda m: isinstance(m, match))
    if test(module):
        return module
    found = [m for m in module.modules() if test(m)]
    return found[-1] if len(found) == 1 else None
