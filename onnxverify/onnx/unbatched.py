"""Checking the import of a model whose input has no batch axis.

The converters read every ONNX tensor as ``(batch, *sample)``. An input without a batch
axis is imported as one sample: its whole tensor is the sample, and the IR adds the batch
axis. That is exact for ops that do not look at axes (elementwise ops, MatMul of a vector,
...), but an op whose axes count from the tensor's first axis (Softmax(axis=0), Flatten,
Concat(axis=0), ...) would be read one axis off. So after such an import every computed
ONNX tensor is compared with onnx's reference evaluator at a random input: each must have
the same values, with its own shape or with a leading unit axis added; the first tensor
that differs is one :class:`~onnxverify.errors.ModelError` naming its node.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import ModelError


def check_unbatched(model: onnx.ModelProto, graph, ctx, inputs, seed: int = 0) -> None:
    """Raise :class:`ModelError` naming the first ONNX node whose imported value differs
    from onnx's reference evaluator on one random input in ``[-1, 1]``."""
    from onnx.reference import ReferenceEvaluator

    from ..backend import NUMPY
    from ..ops.evaluate import evaluate
    from .reference import with_op_functions

    rng = np.random.default_rng(seed)
    feeds, flat = {}, []
    for gi in inputs:
        x = rng.uniform(-1, 1, gi.sample).astype(np.float32)
        flat.append(x.reshape(-1))
        dtype = {onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16}.get(gi.dtype, np.float32)
        feeds[gi.name] = (x[None] if gi.batched else x).astype(dtype)
    try:
        ref = ReferenceEvaluator(with_op_functions(model)).run(None, feeds, intermediate=True)
    except Exception as e:
        raise ModelError("the model's input has no batch axis and onnx's reference evaluator, which checks such "
                         f"imports, cannot run it: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    x_ir = np.concatenate(flat).reshape((1,) + graph.input_shape)
    ours = evaluate(graph, x_ir, NUMPY, keep_all=True)
    for node in _ordered(model):
        for name in node.output:
            ir = ctx.alias.get(name)
            if not name or ir not in ours or name not in ref:
                continue
            r = np.asarray(ref[name], dtype=np.float64)
            v = np.asarray(ours[ir], dtype=np.float64)
            if r.shape not in (v.shape, v.shape[1:]):
                raise ModelError(f"node {node.name or name} ({node.op_type}): imported with shape {v.shape[1:]}, "
                                 f"but the model computes {list(r.shape)} -- the input has no batch axis and this "
                                 "op's axes or shapes count from the tensor's first axis (not supported; export "
                                 "the model with a batch axis)")
            if not np.allclose(v.reshape(r.shape), r, rtol=1e-3, atol=1e-4 * (1 + np.abs(r).max(initial=0)),
                               equal_nan=True):
                raise ModelError(f"node {node.name or name} ({node.op_type}): imported values differ from the "
                                 "model's -- the input has no batch axis and this op's axes count from the tensor's "
                                 "first axis (not supported; export the model with a batch axis)")


def _ordered(model):
    from .graph_io import toposort

    return toposort(model.graph)
