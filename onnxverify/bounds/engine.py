"""The state of one linear bound computation: concrete bounds, forward maps, relaxations.

Shapes: ``B`` batch, ``n0`` flattened input size, ``K`` rows of a backward pass.

* Forward maps of a node (:class:`onnxverify.ops.Maps`): lower/upper linear functions of the
  input (PAPER_NOTES.md §2, eq. 17-18), coefficients ``(B, n0, *shape)`` and constants
  ``(B, *shape)``; each op's rule computes them from its inputs' maps (``forward_linear``).
* Relaxations: what a nonlinear rule's ``relax`` returns for its inputs' best bounds; the
  linear steps of that rule read it back.
* Backward passes live in :mod:`.backward`; they read this state.

Every rule is reached through the registry: nothing here names an op.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph
from ..ops import Maps, rule_of
from ..ops.patches import Patches
from .plan import plan_of


class StepContext:
    """What a rule's backward step may read about its node: ``relax`` (its relaxation),
    ``offset`` (an affine op's constant term ``(1, *shape)``), ``in_shapes``, ``diagonal``
    (an affine op whose transpose scales each position: one ``(1, *in_shape)`` diagonal per
    input, else None; patch steps use it)."""

    def __init__(self, eng: "LinearEngine", node):
        self._eng, self._node = eng, node
        self.in_shapes = eng.plan.in_shapes[node.name]

    @property
    def relax(self):
        return self._eng.relaxation(self._node.name)

    @property
    def offset(self):
        return self._eng.offset(self._node.name)

    @property
    def diagonal(self):
        return self._eng.diagonal(self._node.name)


class LinearEngine:
    """State of one bound computation over ``graph`` and ``input_set`` (batched)."""

    def __init__(self, graph: Graph, input_set, bk, dtype, strategy: str, ibp_env: dict):
        self.g, self.bk, self.dtype, self.strategy = graph, bk, dtype, strategy
        self.ibp = ibp_env
        self.input_set = input_set
        self.plan = plan_of(graph)  # input-independent facts, shared by every call on this graph
        self.bounds: dict = {}  # name -> (lower, upper), (B, *shape): the best known
        self.maps: dict = {}  # name -> Maps
        self.relax: dict = {}  # nonlinear node name -> its relaxation
        self._offsets: dict = {}
        self._steps: dict = {}
        lo = ibp_env[graph.input.name][0]
        self.B, self.n0 = int(lo.shape[0]), graph.input.size

    # ---- concrete bounds --------------------------------------------------------------------
    def concretize(self, A, c, upper: bool):
        """Bound of ``A x + c`` over the input set: A ``(B, K, n0)`` (or
        :class:`~onnxverify.ops.patches.Patches` on the input: the set's window form,
        :meth:`InputSet.concretize_patches`), c ``(B, K)`` -> ``(B, K)``."""
        if isinstance(A, Patches):
            return self.input_set.concretize_patches(self.bk, A, c, upper)
        return self.input_set.concretize(self.bk, A, c, upper)

    def concretize_maps(self, name):
        m = self.maps[name]
        bk, B = self.bk, self.B
        shape = (B,) + tuple(self.g[name].shape)
        t = lambda k: bk.transpose(bk.reshape(k, (B, self.n0, -1)), (0, 2, 1))  # noqa: E731  (B, N, n0)
        lo = self.concretize(t(m.Lk), bk.reshape(m.Lc, (B, -1)), upper=False)
        hi = self.concretize(t(m.Uk), bk.reshape(m.Uc, (B, -1)), upper=True)
        return bk.reshape(lo, shape), bk.reshape(hi, shape)

    def tighten(self, name, lo, hi):
        """Intersect new bounds with the best known ones for ``name`` (see :func:`intersect`)."""
        self.bounds[name] = intersect(self.bk, self.best(name), (lo, hi))

    def best(self, name):
        return self.bounds.get(name, self.ibp[name])

    # ---- relaxations and constants -------------------------------------------------------------
    def relax_node(self, name):
        """(Re)compute the relaxation of nonlinear node ``name`` from its inputs' best bounds."""
        node = self.g[name]
        self.relax[name] = rule_of(node).relax(self.bk, node, [self.best(i) for i in node.inputs], self.strategy)

    def relaxation(self, name):
        if name not in self.relax:
            self.relax_node(name)
        return self.relax[name]

    def offset(self, name):
        if name not in self._offsets:
            self._offsets[name] = self.plan.offset(self.bk, name, self.dtype)
        return self._offsets[name]

    def diagonal(self, name):
        """The diagonals of affine node ``name`` (see :meth:`Plan.diagonal`): its transpose
        applied to ones on this backend (so autograd flows through tied parameters), or None."""
        if not self.plan.diagonal(name):
            return None
        key = ("diag", name)
        if key not in self._offsets:
            node = self.g[name]
            ones = self.bk.asarray(np.ones((1,) + tuple(node.shape)), dtype=self.dtype)
            self._offsets[key] = self.plan.rules[name].adjoint(self.bk, node, ones, self.plan.in_shapes[name])
        return self._offsets[key]

    def step(self, node) -> StepContext:
        if node.name not in self._steps:
            self._steps[node.name] = StepContext(self, node)
        return self._steps[node.name]

    # ---- forward maps (LBP) ----------------------------------------------------------------------
    def input_maps(self):
        bk, B, n0, shape = self.bk, self.B, self.n0, tuple(self.g.input_shape)
        eye = np.broadcast_to(np.eye(n0).reshape((1, n0) + shape), (B, n0) + shape)
        k = bk.asarray(np.ascontiguousarray(eye), dtype=self.dtype)
        c = bk.zeros((B,) + shape, dtype=self.dtype)
        self.maps[self.g.input.name] = Maps(k, c, k, c)

    def forward_maps(self, name):
        """Forward linear bounds of node ``name`` from the maps of its inputs."""
        node = self.g[name]
        rule = rule_of(node)
        relax = None if rule.affine else self.relaxation(name)
        self.maps[name] = rule.forward_linear(self.bk, node, relax, [self.maps[i] for i in node.inputs])


def intersect(bk, a, b):
    """Intersection of two sound interval bounds ``a = (lo, hi)`` and ``b`` (same shapes).

    In exact arithmetic both contain the true values, so the intersection does too and is
    never empty. In float32 two bounds of a (nearly) point-valued quantity computed by
    different arithmetic can cross by a rounding error (IBP's upper bound 1 ulp below a
    linear method's lower bound at eps 0); there the intersection would be empty (lower
    above upper), so those entries take the hull of ``a`` and ``b`` instead.
    """
    lo, hi = bk.maximum(a[0], b[0]), bk.minimum(a[1], b[1])
    crossed = lo > hi
    return bk.where(crossed, bk.minimum(a[0], b[0]), lo), bk.where(crossed, bk.maximum(a[1], b[1]), hi)
