"""onnxverify.converters: model converters around the verifier's ONNX input.

Only the ONNX-side API is re-exported here (no torch import).  The torch side --
``ParamRamp`` module, ``export_onnx`` and the onnx2torch converter -- lives in
:mod:`onnxverify.converters.paramramp_torch`; import it explicitly when torch is wanted.
"""
from .paramramp_onnx import (
    DOMAIN,
    OP_TYPE,
    R_MIN,
    VERSION,
    ParamRampError,
    ParamRampParams,
    attach_paramramp_function,
    is_paramramp_node,
    make_paramramp_node,
    paramramp_eta,
    paramramp_function,
    paramramp_opschema,
    paramramp_reference,
    validate_paramramp_node,
)

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "R_MIN",
    "VERSION",
    "ParamRampError",
    "ParamRampParams",
    "attach_paramramp_function",
    "is_paramramp_node",
    "make_paramramp_node",
    "paramramp_eta",
    "paramramp_function",
    "paramramp_opschema",
    "paramramp_reference",
    "validate_paramramp_node",
]
