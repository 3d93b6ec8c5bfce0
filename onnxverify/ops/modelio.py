"""Model shapes the IR reduces to one input and one output (the importer calls these).

The IR has ONE input node and ONE output. A model with several inputs gets one flat input
``(sum_i n_i,)``: the inputs in declaration order, each flattened in C order, and each
ONNX input is an IR ``Slice`` of it reshaped to its sample shape. A model with several
outputs gets one flat output: the outputs in declaration order, each flattened in C order,
concatenated (``Reshape`` to ``(n_i,)`` then ``Concat``). So VNN-LIB's ``X_i`` / ``Y_i``
run over the inputs / outputs in declaration order. Both are exact affine maps.
"""
from __future__ import annotations

import numpy as np

from .registry import rule_of


def split_flat_input(ctx, flat_ir: str, parts, label: str = "graph input") -> None:
    """``parts``: ``(onnx_name, sample_shape)`` in declaration order; ``flat_ir`` the IR input
    of shape ``(sum of sizes,)``. Each ONNX name becomes the matching slice, reshaped."""
    start = 0
    for name, shape in parts:
        n = int(np.prod(shape, dtype=np.int64))
        part = ctx.add(name + "/flat", "Slice", [flat_ir], attrs={"index": ((start, start + n, 1, False),)},
                       source=label)
        ctx.add(name, "Reshape", [part], source=label, shape=tuple(int(d) for d in shape))
        start += n


def concat_flat_outputs(ctx, names, out_name: str, label: str = "graph outputs") -> str:
    """IR node ``(sum of sizes,)``: the computed ONNX tensors ``names`` flattened and
    concatenated in order; returns its IR name."""
    flats = []
    for name in names:
        ir = ctx.computed(name)
        n = int(np.prod(ctx.probes[ir].shape[1:], dtype=np.int64))
        flats.append(ctx.add(name + "/flat", "Reshape", [ir], source=label, shape=(n,)))
    return ctx.add(out_name, "Concat", flats, attrs={"axis": 0}, source=label)


def index_parts(graph):
    """``[(node, start, stop)]``: the flat output positions that are indices (a rule with
    ``index_output``), each with its node: the whole output when the output node is one, or
    the parts of the :func:`concat_flat_outputs` concatenation that are."""
    def is_index(node):
        return getattr(rule_of(node), "index_output", False)

    out = graph[graph.output]
    size = lambda node: int(np.prod(node.shape, dtype=np.int64))  # noqa: E731
    if is_index(out):
        return [(out, 0, size(out))]
    if not out.source.startswith("graph outputs") or out.op != "Concat":
        return []
    parts, start = [], 0
    for name in out.inputs:
        flat = graph[name]
        inner = graph[flat.inputs[0]] if flat.op == "Reshape" else flat
        if is_index(inner):
            parts.append((inner, start, start + size(flat)))
        start += size(flat)
    return parts
