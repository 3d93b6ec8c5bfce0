"""The layer IR: a DAG of :class:`Node` in topological order, with a leading batch axis.

Plain data and structure queries only: what each op computes lives in its rule
(:mod:`onnxverify.ops`, looked up by ``node.op``). Each node names its output tensor, its
op, the names of its computed inputs, constant parameters (NumPy arrays) and attributes.
``shape`` is the output shape of ONE sample (no batch axis); at run time every tensor is
``(batch, *shape)``. The graph input is the one node whose op is ``Input``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

INPUT = "Input"


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
        inputs = [n for n in self.nodes if n.op == INPUT]
        if len(inputs) != 1:
            raise ValueError(f"graph must have exactly one Input node, got {len(inputs)}")
        self.input = inputs[0]
        self._check_order()
        self._consumers = None
        self._ancestors: dict = {}

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

    @property
    def computed(self) -> list:
        """Every node but the input, in topological order."""
        return [n for n in self.nodes if n is not self.input]

    def consumers(self) -> dict:
        """name -> list of nodes that read it (computed once)."""
        if self._consumers is None:
            out = {n.name: [] for n in self.nodes}
            for n in self.nodes:
                for i in n.inputs:
                    out[i].append(n)
            self._consumers = out
        return self._consumers

    def ancestors(self, name: str) -> set:
        """Names of ``name`` and every node it depends on (cached)."""
        if name not in self._ancestors:
            seen, stack = set(), [name]
            while stack:
                n = stack.pop()
                if n not in seen:
                    seen.add(n)
                    stack.extend(self[n].inputs)
            self._ancestors[name] = frozenset(seen)
        return self._ancestors[name]

    def reversed_from(self, name: str) -> list:
        """``name`` and its ancestors in reverse topological order (a backward pass's order)."""
        keep = self.ancestors(name)
        return [n for n in reversed(self.nodes) if n.name in keep]

    def op_counts(self) -> dict:
        counts: dict = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    # ---- traversal -----------------------------------------------------------------
    def evaluate(self, input_value, step: Callable, keep_all: bool = False, known: dict | None = None,
                 stop: str | None = None):
        """Topological evaluation: ``value(node) = step(node, *values of its inputs)``.

        ``known``: values given for some nodes (used as they are). ``stop``: stop after this
        node. Values no later node reads are dropped unless ``keep_all``. Returns the output's
        value, or ``{name: value}`` with ``keep_all``."""
        env = dict(known) if known else {}
        env.setdefault(self.input.name, input_value)
        left = None if keep_all else {name: len(c) for name, c in self.consumers().items()}
        for n in self.nodes:
            if n.name not in env:
                env[n.name] = step(n, *[env[i] for i in n.inputs])
            if not keep_all:
                for i in n.inputs:
                    left[i] -= 1
                    if left[i] == 0 and i != self.output:
                        env.pop(i, None)
            if n.name == stop:
                break
        return env if keep_all else env[self.output]

    def summary(self) -> str:
        lines = [f"{'node':<32} {'op':<10} {'shape':<18} inputs"]
        for n in self.nodes:
            lines.append(f"{n.name[:32]:<32} {n.op:<10} {str(n.shape):<18} {', '.join(n.inputs)}")
        return "\n".join(lines)
