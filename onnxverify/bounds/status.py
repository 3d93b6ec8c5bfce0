"""Neuron statuses: which pieces of its activation each neuron can reach (PAPER_NOTES.md §1).

A neuron's status follows from its pre-activation bounds ``[l, u]`` over an input set:

Each op rule with ``statuses`` classifies its neurons (``status_codes``): the ReLU family
dead / unstable / alive (:mod:`onnxverify.ops.relu`), ParamRamp its six statuses
(:mod:`onnxverify.ops.paramramp`). Every neuron gets exactly one status.

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
from ..ir import Graph
from ..ops import rule_of
from ..ops.paramramp import PARAMRAMP_STATUSES, paramramp_status  # noqa: F401  (re-exported)
from ..ops.relu import RELU_STATUSES, relu_status  # noqa: F401  (re-exported)
from ..specs.input_sets import InputSet

#: every status in table/plot order (left to right, bottom to top)
ALL_STATUSES = ("dead", "left dead", "left unstable", "alive", "right unstable", "right dead", "unstable")


@dataclass
class LayerStatus:
    """Neuron statuses of one activation layer over a batch of input sets.

    ``counts[s]`` sums status ``s`` over all ``batch * size`` neurons (``size`` per sample);
    ``codes`` is ``(batch, *shape)``: indices into ``statuses`` per neuron.
    """

    index: int  # 1-based position among the graph's activation layers
    name: str  # the activation node
    op: str  # the IR op (its rule has ``statuses``)
    input: str  # its pre-activation node
    statuses: tuple  # the rule's status names
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
    return [n for n in graph.computed if rule_of(n).statuses is not None]


def preactivation_bounds(graph: Graph, input_set: InputSet, method: str = "ibp", strategy: str | None = None,
                         backend=None, dtype=np.float32, max_memory: int | None = None) -> dict:
    """``{node name: (lower, upper)}`` (backend arrays ``(batch, *shape)``) of every node that
    feeds a nonlinear node, as ``method`` computes them on the way to its output bounds.

    Uses :func:`onnxverify.bounds.methods.intermediate_bounds` (the method without its
    output pass).
    """
    from ..ops import DEFAULT_STRATEGY, check_strategy
    from .ibp import interval_bounds
    from .methods import intermediate_bounds, parse_method
    from .passes import bound_nodes

    method = parse_method(method).name
    bk = get_backend(backend)
    iset = input_set.batched(graph.input_shape)
    env = interval_bounds(bk, graph, iset, dtype)
    needs = bound_nodes(graph)
    if method == "ibp":
        return {n: env[n] for n in needs}
    strategy = check_strategy(strategy or DEFAULT_STRATEGY)
    if not needs:
        return {}
    eng = intermediate_bounds(graph, iset, method, strategy, bk, dtype, env, max_memory, stop_after=needs[-1])
    return {n: eng.best(n) for n in needs}


def neuron_status(network_or_graph, input_set: InputSet, method: str = "ibp", strategy: str | None = None,
                  backend=None, dtype=np.float32, max_memory: int | None = None) -> list:
    """Per-layer neuron statuses (list of :class:`LayerStatus`, in graph order) of every layer
    whose rule has statuses (ReLU / LeakyReLU / ParamRamp), from the pre-activation bounds of
    ``method`` (``ibp``, ``lbp``, ``crown-ibp``, ``crown-lbp``, ``crown``, ``relaxed-crown-V``)
    with bounding-line ``strategy`` (linear methods; default ``adaptive``).

    Layers without statuses (Sigmoid, Tanh, MaxPool, ...) are skipped.
    """
    from ..ops import DEFAULT_STRATEGY

    graph = getattr(network_or_graph, "graph", network_or_graph)
    if not isinstance(graph, Graph):
        raise TypeError(f"expected a Network or Graph, got {type(network_or_graph).__name__}")
    bounds = preactivation_bounds(graph, input_set, method, strategy, backend, dtype, max_memory)
    method = method.lower()
    bk = get_backend(backend)
    out = []
    for k, node in enumerate(_status_layers(graph), 1):
        lo, hi = (np.asarray(bk.to_numpy(a), dtype=np.float64) for a in bounds[node.inputs[0]])
        rule = rule_of(node)
        codes, names = rule.status_codes(node, lo, hi), rule.statuses
        counts = {s: int((codes == i).sum()) for i, s in enumerate(names)}
        out.append(LayerStatus(k, node.name, node.op, node.inputs[0], names, counts, node.size, lo.shape[0],
                               method, None if method == "ibp" else (strategy or DEFAULT_STRATEGY), codes))
    return out
