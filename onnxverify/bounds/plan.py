"""The compiled bound plan: what a bound computation needs to know about a graph that does
not depend on the input set, worked out once per graph and reused by every call.

Branch and bound calls the engine thousands of times on the same graph: the per-node Python
work (rule lookups, which nodes need bounds, which ones IBP already bounds exactly, the
order of each backward pass, the memory estimate's largest ancestor and kernel) and the
constant terms of the affine ops (an op applied to zeros: a convolution per conv layer) are
done on the first call and read back afterwards.

A plan is kept with its graph (:func:`plan_of`); a graph is never changed after it is built
(its consumers and ancestors are cached the same way). Constant terms are cached per
``(backend, dtype)`` only while the node's parameters are the same NumPy arrays: parameters
tied to torch tensors (training) are recomputed on every call, so gradients still flow.
"""
from __future__ import annotations

import weakref

import numpy as np

from ..ops import rule_of
from .affine_maps import affine_prefix

_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def plan_of(graph) -> "Plan":
    """The plan of ``graph`` (built on first use)."""
    plan = _PLANS.get(graph)
    if plan is None:
        plan = _PLANS[graph] = Plan(graph)
    return plan


class Plan:
    """Input-independent facts about ``graph`` for the bound engines (see the module
    docstring). Everything is computed lazily and cached."""

    def __init__(self, graph):
        self.graph = graph
        self.rules = {n.name: rule_of(n) for n in graph.computed}
        need = {i for n in graph.computed if not self.rules[n.name].affine for i in n.inputs}
        #: nodes whose bounds a relaxation needs (inputs of nonlinear nodes), in order
        self.bound_nodes = [n.name for n in graph.nodes if n.name in need]
        self.exact = frozenset(exact_by_ibp(graph))
        self.in_shapes = {n.name: [tuple(graph[i].shape) for i in n.inputs] for n in graph.computed}
        self.consumer_counts = {name: len(cs) for name, cs in graph.consumers().items()}
        self._orders: dict = {}
        self._extent: dict = {}
        self._cuts: dict = {}
        self._offsets: dict = {}
        self._diagonal: dict = {}

    def order(self, start: str) -> list:
        """``start`` and its ancestors in reverse topological order (a backward pass)."""
        if start not in self._orders:
            self._orders[start] = self.graph.reversed_from(start)
        return self._orders[start]

    def extent(self, start: str) -> tuple:
        """``(largest ancestor size, widest kernel size)`` of the ancestors of ``start``."""
        if start not in self._extent:
            g = self.graph
            ancestors = [g[n] for n in g.ancestors(start)]
            biggest = max(n.size for n in ancestors)
            kernels = [self.rules[n.name].kernel_size(n) for n in ancestors if n is not g.input]
            self._extent[start] = (biggest, max(kernels) if kernels else 1)
        return self._extent[start]

    def cut_nodes(self, needs, depth) -> set:
        """Bound nodes where an output pass of ``depth`` substitutes forward maps."""
        key = (frozenset(needs), depth)
        if key not in self._cuts:
            self._cuts[key] = frozenset(output_cut_nodes(self.graph, set(needs), depth))
        return set(self._cuts[key])

    def diagonal(self, name: str) -> bool:
        """Affine node ``name`` of a ``(C, H, W)`` shape maps each position of each input to the
        same position of the output with one factor (per-channel affine, BatchNorm, Add, Sub,
        Neg): its transpose is a per-position scaling, so patches pass through as patches.
        Checked once, numerically: ``L^T r == r * L^T 1`` for a random ``r``."""
        if name not in self._diagonal:
            self._diagonal[name] = _is_diagonal(self.rules[name], self.graph[name], self.in_shapes[name])
        return self._diagonal[name]

    def offset(self, bk, name: str, dtype):
        """The constant term ``(1, *shape)`` of affine node ``name`` (its output at zero
        inputs), cached while its parameters are the same NumPy arrays."""
        node = self.graph[name]
        params = tuple(node.params.values())
        cacheable = all(isinstance(p, np.ndarray) for p in params)
        key = (id(bk), name, str(dtype))
        hit = self._offsets.get(key) if cacheable else None
        if hit is not None and len(hit[0]) == len(params) and all(a is b for a, b in zip(hit[0], params)):
            return hit[1]
        value = self.rules[name].offset(bk, node, self.in_shapes[name], dtype)
        if cacheable:
            self._offsets[key] = (params, value)
        return value


def _is_diagonal(rule, node, in_shapes) -> bool:
    shape = tuple(node.shape)
    if not rule.affine or len(shape) != 3 or any(tuple(s) != shape for s in in_shapes):
        return False
    from ..backend import NUMPY

    r = np.random.default_rng(0).uniform(0.5, 1.5, (1,) + shape)
    try:
        ones, rand = (rule.adjoint(NUMPY, node, a, in_shapes) for a in (np.ones((1,) + shape), r))
    except NotImplementedError:
        return False
    return all(np.allclose(np.asarray(b), r * np.asarray(a), rtol=1e-9, atol=1e-12) for a, b in zip(ones, rand))


def exact_by_ibp(graph) -> set:
    """Nodes of the affine prefix that IBP bounds exactly for any input box (and the l_p
    prefix bounds are exact by the dual norm): every path from the input crosses at most
    one rule that mixes positions (elementwise affine maps, reshapes, transposes, pads and
    concatenations map boxes to boxes exactly)."""
    mixes = {graph.input.name: 0}
    for name in affine_prefix(graph):
        node = graph[name]
        mixes[name] = max(mixes[i] for i in node.inputs) + int(rule_of(node).mixes)
    return {n for n, m in mixes.items() if m <= 1 and n != graph.input.name}


def output_cut_nodes(graph, needs, depth):
    """Bound nodes where the output pass of depth ``depth`` substitutes forward maps."""
    if depth is None:
        return set()
    dist, cuts = {graph.output: 0}, set()
    for n in graph.reversed_from(graph.output):
        if n.name not in dist:
            continue
        d = dist[n.name]
        if d >= depth and n.name in needs:
            cuts.add(n.name)
            continue
        step = 0 if (n is graph.input or rule_of(n).affine) else 1
        for i in n.inputs:
            dist[i] = max(dist.get(i, 0), d + step)
    return cuts
