"""What an ONNX graph declares, read once for the importer, the onnxruntime reference and
the unbatched-import check: its inputs (:class:`GraphInput`) and a node order."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import ModelError

__all__ = ["GraphInput", "graph_inputs", "toposort"]


@dataclass
class GraphInput:
    """One ONNX graph input: ``sample`` its per-sample shape; ``batched`` whether its first
    axis is a batch axis (symbolic, or 1 with rank >= 2); without one the whole tensor is
    one sample."""

    name: str
    dims: tuple
    batched: bool
    dtype: int

    @property
    def sample(self) -> tuple:
        return tuple(self.dims[1:]) if self.batched else tuple(self.dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.sample, dtype=np.int64))


def graph_inputs(model: onnx.ModelProto) -> list:
    """The model's inputs (initializers excluded) as :class:`GraphInput`, in declaration
    order. Raises :class:`ModelError` for non-float or non-static inputs."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in (i for i in model.graph.input if i.name not in inits):
        tt = vi.type.tensor_type
        if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise ModelError(f"input {vi.name} has element type {onnx.TensorProto.DataType.Name(tt.elem_type)}; "
                             "only floating-point inputs are supported")
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
        batched = len(dims) >= 2 and (isinstance(dims[0], str) or dims[0] == 1)
        gi = GraphInput(vi.name, dims, batched, tt.elem_type)
        if not gi.sample or any(not isinstance(d, int) or d <= 0 for d in gi.sample):
            raise ModelError(f"input {vi.name} has shape {list(dims)}; its sample dimensions must be static "
                             "(a leading symbolic or unit batch axis is optional)")
        out.append(gi)
    if not out:
        raise ModelError("the model has no graph input (every input is an initializer)")
    return out


def toposort(graph: onnx.GraphProto) -> list:
    """ONNX nodes in a valid topological order (most files are already sorted)."""
    produced = {o for n in graph.node for o in n.output}
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    order = []
    while pending:
        progress = []
        rest = []
        for n in pending:
            if all(i in available or i not in produced for i in n.input):
                progress.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if not progress:
            raise ModelError(f"the ONNX graph has a cycle through node {rest[0].name or rest[0].output[0]}")
        order.extend(progress)
        pending = rest
    return order
