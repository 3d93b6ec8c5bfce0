"""onnxruntime as the reference for what a model computes."""
from __future__ import annotations

import numpy as np
import onnx

from ..ops import REGISTRY


def with_op_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the function bodies of custom-domain ops attached where the model uses such
    an op but a tool pass dropped its model-local function (stock onnxruntime needs the body;
    the op's rule provides it as ``onnx_function(opset)``); else ``model`` itself."""
    have = {(f.domain, f.name) for f in model.functions}
    used = {(n.domain, n.op_type) for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    versions = {o.domain: int(o.version) for o in model.opset_import}
    bodies = []
    for domain, op_type in sorted(used - have):
        conv = REGISTRY.converter(domain, op_type, versions.get(domain, 1))
        make = getattr(conv.rule, "onnx_function", None) if conv is not None else None
        if make is not None:
            bodies.append((domain, make(versions.get("", versions.get("ai.onnx", 13)))))
    if not bodies:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for domain, body in bodies:
        copy.functions.append(body)
        if domain not in versions:
            copy.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    copy.ir_version = max(copy.ir_version, 8)  # model-local functions need IR >= 8
    return copy


class OrtModel:
    """An onnxruntime CPU session over one ONNX model, run on ``(batch, *sample)`` arrays.

    Models whose input has a fixed batch dimension of 1 are run one sample at a time.
    """

    def __init__(self, model_or_path):
        import onnxruntime as ort

        model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
        model = with_op_functions(model)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = isinstance(inp.shape[0], int)
        self.dtype = np.float64 if inp.type == "tensor(double)" else np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        if self.fixed_batch and x.shape[0] != 1:
            return np.concatenate([self(x[i:i + 1]) for i in range(x.shape[0])], axis=0)
        return np.asarray(self.session.run(None, {self.input_name: x})[0])
