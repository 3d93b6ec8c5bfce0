"""Graph rewrites that keep the function exactly.

:func:`fuse_affine`: a node whose rule is a per-channel affine map (``channel_affine``:
BatchNorm, bias Add) directly after a node whose rule can absorb it
(``absorb_channel_affine``: Linear, Conv) is folded into it, when the first node has no
other reader.
"""
from __future__ import annotations

from ..ir import Graph, Node
from ..ops import rule_of


def fuse_affine(graph: Graph) -> Graph:
    consumers = graph.consumers()
    entry = graph.input.name
    replaced: dict = {}
    out = []
    for n in graph.nodes:
        n = Node(n.name, n.op, tuple(replaced.get(i, i) for i in n.inputs), n.params, n.attrs, n.shape, n.source)
        prev = out[-1] if out else None
        affine = rule_of(n).channel_affine(n) if n.name != entry else None
        if (affine is not None and prev is not None and prev.name != entry and n.inputs == (prev.name,)
                and len(consumers[prev.name]) == 1 and prev.name != graph.output):
            params = rule_of(prev).absorb_channel_affine(prev, *affine)
            if params is not None:
                out[-1] = Node(n.name, prev.op, prev.inputs, params, dict(prev.attrs), n.shape,
                               prev.source + "+" + n.source)
                replaced[prev.name] = n.name
                continue
        out.append(n)
    return Graph(out, replaced.get(graph.output, graph.output))
