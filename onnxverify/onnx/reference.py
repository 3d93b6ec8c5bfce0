"""onnxruntime as the reference for what a model computes."""
from __future__ import annotations

import numpy as np
import onnx


def with_paramramp_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the ParamRamp function body attached when the model uses the op but a
    tool pass dropped the function (stock onnxruntime needs the body); else ``model``."""
    from ..converters.paramramp_onnx import DOMAIN, OP_TYPE, attach_paramramp_function

    uses = any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node)
    has = any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions)
    if not uses or has:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return attach_paramramp_function(copy)


class OrtModel:
    """An onnxruntime CPU session over one ONNX model, run on ``(batch, *sample)`` arrays.

    Models whose input has a fixed batch dimension of 1 are run one sample at a time.
    """

    def __init__(self, model_or_path):
        import onnxruntime as ort

        model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
        model = with_paramramp_function(model)
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
