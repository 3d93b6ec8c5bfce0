"""The layer IR: a DAG of :class:`Node` in topological order, with a leading batch axis.

Each node names its output tensor, its op (a key of :data:`onnxverify.ops.REGISTRY`), the
names of its computed inputs, constant parameters (NumPy arrays) and attributes. ``shape``
is the output shape of ONE sample (no batch axis); at run time every tensor is
``(batch, *shape)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .backend import Backend, get_backend


@dataclass
class Node:
    name: str
    op: str
    inputs: tuple = ()
    params: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    shape: tuple = ()
    source: str = ""  # the ONNX node(s) this came from, for messages

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self):
        return f"Node({self.name!r}, {self.op}, inputs={list(self.inputs)}, shape={self.shape})"


class Graph:
    """A topologically ordered DAG with one input node (op ``Input``) and one output."""

    def __init__(self, nodes: list, output: str):
        self.nodes = list(nodes)
        self.output = output
        self._by_name = {n.name: n for n in self.nodes}
        inputs = [n for n in self.nodes if n.op == "Input"]
        if len(inputs) != 1:
            raise ValueError(f"graph must have exactly one Input node, got {len(inputs)}")
        self.input = inputs[0]
        self._check_order()

    def _check_order(self):
        seen = set()
        for n in self.nodes:
            for i in n.inputs:
                if i not in seen:
                    raise ValueError(f"node {n.name} uses {i} before it is computed")
            seen.add(n.name)
        if self.output not in seen:
            raise ValueError(f"output {self.output} is not computed by the graph")

    # ---- structure --------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self):
        return len(self.nodes)

    @property
    def input_shape(self) -> tuple:
        return self.input.shape

    @property
    def output_shape(self) -> tuple:
        return self[self.output].shape

    def consumers(self) -> dict:
        """name -> list of nodes that read it."""
        out = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n)
        return out

    def op_counts(self) -> dict:
        counts: dict = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    # ---- evaluation --------------------------------------------------------------
    def run(self, values_for_input, step: Callable, backend: Backend | str | None = None, keep_all=False):
        """Generic topological evaluation: ``step(rule, node, *input_values)`` per node."""
        from .ops import rule_for

        bk = get_backend(backend)
        env = {self.input.name: values_for_input}
        consumers_left = {n.name: 0 for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                consumers_left[i] += 1
        for n in self.nodes:
            if n.op == "Input":
                continue
            env[n.name] = step(rule_for(n.op), bk, n, *[env[i] for i in n.inputs])
            if not keep_all:
                for i in n.inputs:
                    consumers_left[i] -= 1
                    if consumers_left[i] == 0 and i != self.output:
                        del env[i]
        return env if keep_all else env[self.output]

    def forward(self, x, backend: Backend | str | None = None, keep_all: bool = False):
        """Evaluate the network. ``x``: ``(batch, *input_shape)`` -> ``(batch, *output_shape)``."""
        bk = get_backend(backend)
        x = bk.asarray(x)
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"input has sample shape {tuple(x.shape[1:])}, graph expects {self.input_shape}")
        return self.run(x, lambda rule, bk_, node, *xs: rule.forward(bk_, node, *xs), bk, keep_all)

    def summary(self) -> str:
        lines = [f"{'node':<32} {'op':<10} {'shape':<18} inputs"]
        for n in self.nodes:
            lines.append(f"{n.name[:32]:<32} {n.op:<10} {str(n.shape):<18} {', '.join(n.inputs)}")
        return "\n".join(lines)


def params_as(bk: Backend, node: Node, key: str, dtype):
    """A node's constant parameter as an array of backend ``bk`` (cached per backend+dtype)."""
    value = node.params[key]
    if not isinstance(value, np.ndarray):  # e.g. a torch Parameter during training: no copy
        return bk.asarray(value, dtype=dtype)
    cache = node.attrs.setdefault("_cache", {})
    k = (bk.name, key, str(dtype))
    if k not in cache:
        cache[k] = bk.asarray(value, dtype=dtype)
    return cache[k]
