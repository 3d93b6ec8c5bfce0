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


_DTYPES = {"tensor(double)": np.float64, "tensor(float16)": np.float16}


class OrtModel:
    """An onnxruntime CPU session over one ONNX model, run on IR-shaped arrays.

    ``sample_shape`` is the IR's per-sample input shape: the one input's (without its batch
    axis, if it has one), or ``(sum of sizes,)`` for several inputs, flattened in C order and
    concatenated in declaration order (the importer's rule). ``__call__`` takes
    ``(batch, *sample_shape)`` (or any ``(batch, ...)`` with as many values per sample) and
    returns ``(batch, *output)`` for one output, else ``(batch, sum of output sizes)`` (each
    output flattened, in declaration order). Inputs with a fixed batch of 1 or without a
    batch axis are run one sample at a time.
    """

    def __init__(self, model_or_path):
        import onnxruntime as ort

        model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
        self.inputs = _inputs(model)
        model = with_op_functions(model)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = {i.name: i for i in self.session.get_inputs()}
        self.input_name = self.inputs[0].name
        self.dtypes = [_DTYPES.get(feeds[gi.name].type, np.float32) if gi.name in feeds else np.float32
                       for gi in self.inputs]
        self.dtype = self.dtypes[0]
        self.fixed_batch = any(not gi.batched or isinstance(gi.dims[0], int) for gi in self.inputs)
        self.n_outputs = len(self.session.get_outputs())
        static = all(isinstance(d, int) for gi in self.inputs for d in gi.sample)
        self.sizes = [gi.size for gi in self.inputs] if static else None
        #: the IR's per-sample input shape (None when the model's sample dimensions are not static)
        self.sample_shape = (None if not static else self.inputs[0].sample if len(self.inputs) == 1
                             else (sum(self.sizes),))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if len(self.inputs) == 1 and self.inputs[0].batched:
            x = x.astype(self.dtype)
            if self.fixed_batch and x.shape[0] != 1:
                return np.concatenate([self(x[i:i + 1]) for i in range(x.shape[0])], axis=0)
            return self._outputs(self.session.run(None, {self.input_name: x}), x.shape[0])
        if self.fixed_batch and x.shape[0] != 1:
            return np.concatenate([self(x[i:i + 1]) for i in range(x.shape[0])], axis=0)
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != sum(self.sizes):
            raise ValueError(f"input has {flat.shape[1]} values per sample, the model's inputs {sum(self.sizes)}")
        feeds, start = {}, 0
        for gi, n, dtype in zip(self.inputs, self.sizes, self.dtypes):
            part = flat[:, start:start + n].reshape((x.shape[0],) + gi.sample)
            feeds[gi.name] = (part if gi.batched else part[0]).astype(dtype)
            start += n
        return self._outputs(self.session.run(None, feeds), x.shape[0])

    def _outputs(self, outs, batch):
        if all(gi.batched for gi in self.inputs):  # the outputs have the batch axis too
            if self.n_outputs == 1:
                return np.asarray(outs[0])
            return np.concatenate([np.asarray(o).reshape(batch, -1) for o in outs], axis=1)
        if self.n_outputs == 1:  # one sample (batch 1)
            return np.asarray(outs[0])[None]
        return np.concatenate([np.asarray(o).reshape(1, -1) for o in outs], axis=1)


def _inputs(model):
    """The importer's reading of the inputs; a model it refuses (non-float or non-static
    inputs) keeps onnxruntime's own first input, taken as batched."""
    from ..errors import ModelError
    from .graph_io import GraphInput, graph_inputs

    try:
        return graph_inputs(model)
    except ModelError:
        inits = {i.name for i in model.graph.initializer}
        vi = next(i for i in model.graph.input if i.name not in inits)
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in vi.type.tensor_type.shape.dim)
        return [GraphInput(vi.name, dims, True, vi.type.tensor_type.elem_type)]
