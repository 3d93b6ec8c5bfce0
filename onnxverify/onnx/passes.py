"""Graph rewrites that keep the function exactly: fuse elementwise Affine ops into the
Linear/Conv before them when the Affine is per output channel (BatchNorm after Conv,
bias Add after MatMul)."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node


def _per_channel(p: np.ndarray, node: Node):
    """``p`` (broadcastable to node.shape) as a vector over output channels, or None."""
    if node.op == "Linear":
        p = np.broadcast_to(p, node.shape) if p.ndim <= len(node.shape) else None
        if p is None or len(node.shape) != 1:
            # a Linear on the last axis of a higher-rank tensor: parameter must be constant over other axes
            if p is not None:
                first = p.reshape(-1, node.shape[-1])
                if np.all(first == first[:1]):
                    return first[0]
            return None
        return p
    if node.op == "Conv":
        full = np.broadcast_to(p, node.shape)
        flat = full.reshape(node.shape[0], -1)
        if np.all(flat == flat[:, :1]):
            return flat[:, 0]
    return None


def fuse_affine(graph: Graph) -> Graph:
    consumers = graph.consumers()
    nodes = list(graph.nodes)
    replaced: dict = {}
    out = []
    for n in nodes:
        n = Node(n.name, n.op, tuple(replaced.get(i, i) for i in n.inputs), n.params, n.attrs, n.shape, n.source)
        prev = out[-1] if out else None
        if (n.op == "Affine" and prev is not None and n.inputs[0] == prev.name and prev.op in ("Linear", "Conv")
                and len(consumers[prev.name]) == 1 and prev.name != graph.output):
            scale = _per_channel(n.params["scale"], prev)
            shift = _per_channel(n.params["shift"], prev)
            if scale is not None and shift is not None:
                w = prev.params["weight"].astype(np.float64)
                w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
                b = prev.params["bias"].astype(np.float64) * scale + shift
                fused = Node(n.name, prev.op, prev.inputs, {"weight": w.astype(np.float32), "bias": b.astype(np.float32)},
                             {k: v for k, v in prev.attrs.items() if k != "_cache"}, n.shape, prev.source + "+" + n.source)
                out[-1] = fused
                replaced[prev.name] = n.name
                continue
        out.append(n)
    return Graph(out, replaced.get(graph.output, graph.output))
