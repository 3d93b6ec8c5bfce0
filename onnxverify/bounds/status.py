"""Neuron statuses: which pieces of its activation each neuron can reach (PAPER_NOTES.md §1).

A neuron's status follows from its pre-activation bounds ``[l, u]`` over an input set:

* ReLU family (``Relu``, ``LeakyRelu``): dead ``u <= 0``, alive ``l >= 0``, unstable
  ``l < 0 < u``.
* ParamRamp (bend point ``r`` per neuron, clamped to ``>= 1e-4``): left dead ``u <= 0``,
  left unstable ``l < 0 < u <= r``, alive ``0 <= l, u <= r``, right unstable
  ``0 <= l < r < u``, right dead ``l >= r``, unstable ``l < 0, u > r``.

Where two definitions meet (``l = u = 0``, ``l = u = r``) the dead statuses win, so every
neuron gets exactly one status.

:func:`neuron_status` counts them per activation layer from the pre-activation bounds a
bound method produces: ``ibp`` and ``crown-ibp`` use IBP's intermediate bounds, ``lbp`` and
``crown-lbp`` LBP's, ``crown`` and ``relaxed-crown-V`` their backward passes (the output pass
of a method does not change any activation's input bounds). :func:`onnxverify.report.status.plot_status` draws
the paper's Figures 4/6: one stacked bar of status percentages per layer.

>>> st = neuron_status(net, LinfBall(x0, 2 / 255, clip=(0, 1)), method="crown-lbp", strategy="tight")
>>> from onnxverify.report.status import format_status_table, plot_status
>>> print(format_status_table(st)); plot_status(st, "status.png")
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backend import get_backend
from ..errors import InputError
from ..specs.input_sets import InputSet
from ..ir import Graph

RELU_FAMILY = ("Relu", "LeakyRelu")
STATUS_OPS = RELU_FAMILY + ("ParamRamp",)

RELU_STATUSES = ("dead", "unstable", "alive")
PARAMRAMP_STATUSES = ("left dead", "left unstable", "alive", "right unstable", "right dead", "unstable")
#: every status in table/plot order (left to right, bottom to top)
ALL_STATUSES = ("dead", "left dead", "left unstable", "alive", "right unstable", "right dead", "unstable")

R_MIN = 1e-4  # ParamRamp's clamp of r (same as the op's forward pass)


# ---- classification of one layer ---------------------------------------------------------------
def relu_status(l, u) -> np.ndarray:
    """Status codes (indices into :data:`RELU_STATUSES`) for bounds ``l, u`` (any equal shapes)."""
    l, u = np.asarray(l), np.asarray(u)
    dead, alive = u <= 0, (l >= 0) & (u > 0)
    return np.select([dead, alive], [0, 2], default=1).astype(np.int8)


def paramramp_status(l, u, r) -> np.ndarray:
    """Status codes (indices into :data:`PARAMRAMP_STATUSES`); ``r`` broadcasts against ``l``
    and is clamped to ``>= 1e-4`` like in the op."""
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


@dataclass
class LayerStatus:
    """Neuron statuses of one activation layer over a batch of input sets.

    ``counts[s]`` sums status ``s`` over all ``batch * size`` neurons (``size`` per sample);
    ``codes`` is ``(batch, *shape)``: indices into ``statuses`` per neuron.
    """

    index: int  # 1-based position among the graph's activation layers
    name: str  # the activation node
    op: str  # Relu / LeakyRelu / ParamRamp
    input: str  # its pre-activation node
    statuses: tuple  # RELU_STATUSES or PARAMRAMP_STATUSES
    counts: dict
    size: int
    batch: int
    method: str = "ibp"
    strategy: str | None = None
    codes: np.ndarray | None = field(default=None, repr=False)

    @property
    def total(self) -> int:
        return self.size * self.batch

    @property
    def fractions(self) -> dict:
        """Status -> fraction of the layer's neurons (averaged over the batch)."""
        return {s: c / max(self.total, 1) for s, c in self.counts.items()}

    @property
    def unstable(self) -> int:
        """Neurons whose activation is not linear on ``[l, u]`` (every unstable kind)."""
        return sum(c for s, c in self.counts.items() if "unstable" in s)

    def per_sample(self) -> np.ndarray:
        """``(batch, len(statuses))`` counts per sample."""
        flat = self.codes.reshape(self.batch, -1)
        return np.stack([(flat == k).sum(axis=1) for k in range(len(self.statuses))], axis=1)


# ---- pre-activation bounds of a method ---------------------------------------------------------
def _status_layers(graph: Graph) -> list:
    return [n for n in graph.nodes if n.op in STATUS_OPS]


def preactivation_bounds(graph: Graph, input_set: InputSet, method: str = "ibp", strategy: str | None = None,
                         backend=None, dtype=np.float32, max_memory: int | None = None) -> dict:
    """``{node name: (lower, upper)}`` (backend arrays ``(batch, *shape)``) of every node that
    feeds a nonlinear node, as ``method`` computes them on the way to its output bounds.

    Uses :func:`onnxverify.bounds.methods.intermediate_bounds` (the method without its
    output pass).
    """
    from . import DEFAULT_STRATEGY, STRATEGIES
    from .ibp import interval_bounds
    from .linear import bound_nodes

    method = method.lower()
    bk = get_backend(backend)
    iset = input_set.batched(graph.input_shape)
    env = interval_bounds(bk, graph, iset, dtype)
    needs = bound_nodes(graph)
    if method == "ibp":
        return {n: env[n] for n in needs}
    strategy = strategy or DEFAULT_STRATEGY
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    return _linear_preactivation_bounds(graph, iset, method, strategy, bk, dtype, env, needs, max_memory)


def _linear_preactivation_bounds(graph, iset, method, strategy, bk, dtype, env, needs, max_memory):
    from .methods import intermediate_bounds

    if not needs:
        return {}
    eng = intermediate_bounds(graph, iset, method, strategy, bk, dtype, env, max_memory, stop_after=needs[-1])
    return {n: eng.best(n) for n in needs}


def neuron_status(network_or_graph, input_set: InputSet, method: str = "ibp", strategy: str | None = None,
                  backend=None, dtype=np.float32, max_memory: int | None = None) -> list:
    """Per-layer neuron statuses (list of :class:`LayerStatus`, in graph order) of every
    ReLU / LeakyReLU / ParamRamp layer, from the pre-activation bounds of ``method``
    (``ibp``, ``lbp``, ``crown-ibp``, ``crown-lbp``, ``crown``, ``relaxed-crown-V``) with
    bounding-line ``strategy`` (linear methods; default ``adaptive``).

    Other activations (Sigmoid, Tanh) and MaxPool have no statuses and are skipped.
    """
    from . import DEFAULT_STRATEGY
    from .methods import parse_method

    graph = getattr(network_or_graph, "graph", network_or_graph)
    if not isinstance(graph, Graph):
        raise TypeError(f"expected a Network or Graph, got {type(network_or_graph).__name__}")
    method = method.lower()
    if method != "ibp":
        parse_method(method)
    bounds = preactivation_bounds(graph, input_set, method, strategy, backend, dtype, max_memory)
    bk = get_backend(backend)
    out = []
    for k, node in enumerate(_status_layers(graph), 1):
        lo, hi = (np.asarray(bk.to_numpy(a), dtype=np.float64) for a in bounds[node.inputs[0]])
        if node.op == "ParamRamp":
            r = node.params["r"]
            r = np.asarray(r.detach().cpu().numpy() if hasattr(r, "detach") else r, dtype=np.float64)
            codes, names = paramramp_status(lo, hi, r), PARAMRAMP_STATUSES
        else:
            codes, names = relu_status(lo, hi), RELU_STATUSES
        counts = {s: int((codes == i).sum()) for i, s in enumerate(names)}
        out.append(LayerStatus(k, node.name, node.op, node.inputs[0], names, counts, node.size, lo.shape[0],
                               method, None if method == "ibp" else (strategy or DEFAULT_STRATEGY), codes))
    return out
