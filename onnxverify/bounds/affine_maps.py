"""Affine sub-graphs next to the input and the output, materialised as matrices.

* :func:`affine_prefix` – the nodes computed from the input by affine ops only; an l_p
  ball is mapped through them exactly with the dual norm (PAPER_NOTES.md §2).
* :func:`affine_tail` – the affine chain that ends at the output, from a single entry
  node; the spec matrix ``C`` is folded into it before bounding (:func:`spec_through_tail`,
  by the ops' adjoints).

The prefix pushes basis vectors through the affine ops (in chunks), which works for every
affine op rule without op-specific matrix code.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph
from ..ops import rule_of

CHUNK_BYTES = 256 * 2**20


def affine_prefix(graph: Graph) -> list:
    """Names of the nodes whose value is an affine function of the input (Input excluded)."""
    names, inside = [], {graph.input.name}
    for n in graph.computed:
        if rule_of(n).affine and all(i in inside for i in n.inputs):
            inside.add(n.name)
            names.append(n.name)
    return names


def affine_tail(graph: Graph):
    """``(entry, names)``: the longest chain ``entry -> ... -> output`` of single-input affine
    ops (every intermediate used only inside the chain). ``names`` is empty if the output
    itself is not affine."""
    consumers = graph.consumers()
    names, cur = [], graph.output
    while True:
        node = graph[cur]
        if node is graph.input or not rule_of(node).affine or len(node.inputs) != 1:
            break
        if cur != graph.output and len(consumers[cur]) != 1:
            break
        names.append(cur)
        cur = node.inputs[0]
    return cur, names[::-1]


def run_nodes(bk, graph: Graph, names: list, env: dict, bias: bool, abs_weights: bool = False) -> dict:
    """Evaluate the affine nodes ``names`` (in order) given ``env`` values of their inputs."""
    env = dict(env)
    for name in names:
        node = graph[name]
        rule = rule_of(node)
        xs = [env[i] for i in node.inputs]
        env[name] = rule.apply_abs(bk, node, *xs) if abs_weights else rule.apply(bk, node, *xs, bias=bias)
    return env


def spec_through_tail(bk, graph: Graph, entry: str, names: list, C):
    """Fold the spec into the tail: ``C y = M . entry + c`` with ``C (B, K, n_out)``.

    Pushes the K rows of ``C`` backwards through the tail's adjoints (cost ~ K passes,
    independent of the entry's size). Returns ``M (B, K, n_entry)`` and ``c (B, K)``.
    """
    B, K = C.shape[0], C.shape[1]
    A = bk.reshape(C, (B * K,) + tuple(graph[graph.output].shape))
    c = bk.zeros((B * K,), dtype=C.dtype)
    for name in reversed(names):
        node = graph[name]
        rule = rule_of(node)
        shape = graph[node.inputs[0]].shape
        off = bk.reshape(rule.offset(bk, node, [shape], C.dtype), (-1,))
        c = c + bk.matmul(bk.reshape(A, (B * K, -1)), off)
        A = rule.adjoint(bk, node, A, [shape])[0]
    return bk.reshape(A, (B, K, -1)), bk.reshape(c, (B, K))


def prefix_dual_norms(bk, graph: Graph, names: list, q: float, dtype=np.float64) -> dict:
    """For every prefix node, the q-norm of each row of its (input -> node) matrix, shaped
    like the node's sample: ``y = A x + c`` has ``|y - y(x0)| <= eps * ||A_j||_q``."""
    shape = graph.input.shape
    n_in = int(np.prod(shape, dtype=np.int64))
    biggest = max([graph[n].size for n in names] + [n_in])
    step = max(1, CHUNK_BYTES // (8 * biggest * 2))
    acc = {}
    for start in range(0, n_in, step):
        k = min(step, n_in - start)
        basis = np.zeros((k, n_in))
        basis[np.arange(k), start + np.arange(k)] = 1.0
        env = run_nodes(bk, graph, names, {graph.input.name: bk.asarray(basis.reshape((k,) + shape), dtype=dtype)}, bias=False)
        for n in names:
            col = bk.abs(env[n])
            part = bk.amax(col, axis=0) if q == np.inf else bk.sum(col * col, axis=0)
            acc[n] = part if n not in acc else (bk.maximum(acc[n], part) if q == np.inf else acc[n] + part)
    return {n: (v if q == np.inf else bk.sqrt(v)) for n, v in acc.items()}
