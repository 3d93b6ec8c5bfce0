"""Evaluating an IR graph: the rules' ``forward`` over one topological traversal."""
from __future__ import annotations

from ..backend import get_backend
from .registry import rule_of


def evaluate(graph, x, backend=None, keep_all: bool = False):
    """The network's value. ``x``: ``(batch, *input_shape)`` -> ``(batch, *output_shape)``
    (or ``{node name: value}`` for every node with ``keep_all``)."""
    bk = get_backend(backend)
    x = bk.asarray(x)
    if tuple(x.shape[1:]) != tuple(graph.input_shape):
        raise ValueError(f"input has sample shape {tuple(x.shape[1:])}, graph expects {graph.input_shape}")
    return graph.evaluate(x, lambda node, *xs: rule_of(node).forward(bk, node, *xs), keep_all)
