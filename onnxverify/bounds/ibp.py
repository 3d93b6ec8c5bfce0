"""Interval bound propagation (IBP) over the IR: each rule's ``interval`` in one traversal."""
from __future__ import annotations

import numpy as np

from ..ir import Graph
from ..ops import rule_of
from ..specs.input_sets import InputSet
from .affine_maps import affine_prefix, prefix_dual_norms, run_nodes


def input_intervals(bk, graph: Graph, input_set: InputSet, dtype) -> dict:
    """Bounds of the input node, plus exact bounds of the affine prefix for l_1/l_2 balls
    (``input_set.q``: the dual norm, Hölder). Returns ``{name: (lower, upper)}`` with arrays
    ``(batch, *shape)``."""
    lo, hi = input_set.box()
    out = {graph.input.name: (bk.asarray(lo, dtype=dtype), bk.asarray(hi, dtype=dtype))}
    if input_set.q is not None:
        names = affine_prefix(graph)
        if names:
            norms = prefix_dual_norms(bk, graph, names, input_set.q, dtype=np.float64)
            centers = run_nodes(bk, graph, names, {graph.input.name: bk.asarray(input_set.x0, dtype=np.float64)}, bias=True)
            for n in names:
                rad = norms[n] * input_set.eps
                out[n] = (bk.asarray(centers[n] - rad, dtype=dtype), bk.asarray(centers[n] + rad, dtype=dtype))
    return out


def interval_bounds(bk, graph: Graph, input_set: InputSet, dtype, stop: str | None = None,
                    known: dict | None = None) -> dict:
    """IBP bounds ``{name: (lower, upper)}`` of every node (up to ``stop``, inclusive).

    ``known`` may hold tighter bounds for some nodes (they are used as given)."""
    env = dict(known) if known else {}
    for k, v in input_intervals(bk, graph, input_set, dtype).items():
        env.setdefault(k, v)
    return graph.evaluate(env[graph.input.name], lambda node, *b: rule_of(node).interval(bk, node, *b),
                          keep_all=True, known=env, stop=stop)
