"""ParamRamp as an ONNX custom op (ONNX side only; this module never imports torch).

Operator
--------
``onnxverify::ParamRamp`` (domain :data:`DOMAIN`, op type :data:`OP_TYPE`, version
:data:`VERSION`)::

    Y = ParamRamp(X, R; eta: float = 0.0)
    Y = eta * X + (1 - eta) * Min(Max(X, 0), Max(R, 1e-4))

* ``X``: activations, shape ``(N, *S)`` (batch axis first).
* ``R``: per-neuron bend points, normally an initializer of the *sample shape* ``S``
  (no batch axis).  :func:`validate_paramramp_node` also accepts any shape that is
  broadcastable to ``S`` without adding axes (``rank(R) <= rank(S)``; e.g. a scalar, or
  ``(C, 1, 1)`` for per-channel bend points of a ``(C, H, W)`` activation) -- it never
  broadcasts over the batch axis.  Exporters in this package always write exactly ``S``.
* ``eta``: leak slope in ``[0, 1]`` (``eta = 0`` gives a clipped ReLU at ``R``).
* ``R`` is clamped to ``>= R_MIN`` (1e-4) inside the op, exactly like the torch module.

The op is shipped as a *model-local function* (:class:`onnx.FunctionProto`) whose body
uses only standard ops that exist unchanged in default-domain opsets 13..21 (Constant
with ``value_float`` referencing ``eta`` through ``ref_attr_name``, Sub, Max, Relu, Min,
Mul, Add).  Stock onnxruntime therefore runs exported models with no compiled kernel,
``onnx.checker`` (``full_check=True``) and shape inference pass, and importers still see
one ``ParamRamp`` node per activation.

The body's constants are float32 (``value_float``), so the function is defined for
float32 ``X`` / ``R`` (the only type the project exports).

Some ONNX tool passes (notably :func:`onnx.version_converter.convert_version`) drop
``model.functions`` and/or the ``onnxverify`` opset import; call
:func:`attach_paramramp_function` again afterwards (it is idempotent, and it rebuilds the
function for the model's current default-domain opset).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from onnxverify.ops.paramramp import DOMAIN, OP_TYPE, R_MIN, VERSION, paramramp_function

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "VERSION",
    "R_MIN",
    "ParamRampError",
    "ParamRampParams",
    "paramramp_function",
    "paramramp_opschema",
    "make_paramramp_node",
    "attach_paramramp_function",
    "is_paramramp_node",
    "paramramp_eta",
    "validate_paramramp_node",
    "paramramp_reference",
]

#: default-domain opsets the function body is valid in (checked by the tests)
MIN_OPSET = 13
MAX_OPSET = 21


class ParamRampError(ValueError):
    """Invalid ParamRamp node / parameters (bad R shape, eta outside [0, 1], ...)."""


# ---------------------------------------------------------------------------------------
# schema and node builders (the function body itself lives with the op rule)
# ---------------------------------------------------------------------------------------
def paramramp_opschema() -> "onnx.defs.OpSchema":
    """An (unregistered) :class:`onnx.defs.OpSchema` describing ``onnxverify::ParamRamp``.

    Exporters need it to emit the op (onnxscript looks ops up by schema); it is *not*
    registered globally (``onnx.defs.register_schema``) on purpose, so the checker and
    shape inference keep using the model-local function.
    """
    from onnx.defs import OpSchema

    return OpSchema(
        OP_TYPE,
        DOMAIN,
        VERSION,
        doc="ParamRamp(eta, r): Y = eta*X + (1-eta)*Min(Max(X,0), Max(R,1e-4))",
        inputs=[
            OpSchema.FormalParameter("X", "T", "activations (N, *S)"),
            OpSchema.FormalParameter("R", "T", "per-neuron bend points, shape S"),
        ],
        outputs=[OpSchema.FormalParameter("Y", "T", "same shape as X")],
        type_constraints=[("T", ["tensor(float)"], "float32 tensors")],
        attributes=[
            OpSchema.Attribute("eta", helper.make_attribute("eta", 0.0), "leak slope in [0, 1]")
        ],
    )


def make_paramramp_node(
    x: str, r: str, y: str, eta: float = 0.0, name: Optional[str] = None
) -> onnx.NodeProto:
    """One ``onnxverify::ParamRamp`` node ``y = ParamRamp(x, r; eta)``."""
    eta = _check_eta(eta)
    kwargs = {} if name is None else {"name": name}
    return helper.make_node(OP_TYPE, [x, r], [y], domain=DOMAIN, eta=eta, **kwargs)


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return int(onnx.defs.onnx_opset_version())


def attach_paramramp_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make ``model`` self-contained w.r.t. ParamRamp (in place; returns ``model``).

    * exactly one ``onnxverify::ParamRamp`` function in ``model.functions``, declared
      against the model's current default-domain opset (a stale copy, e.g. one left with
      an older opset by a conversion pass, is replaced);
    * ``onnxverify`` version :data:`VERSION` in ``model.opset_import``;
    * if the model has no default-domain opset import yet, one is added (the body needs it).

    Idempotent.  Call it again after any pass that dropped the function or opset import
    (e.g. ``onnx.version_converter.convert_version``).
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"expected onnx.ModelProto, got {type(model).__name__}")
    has_default = any(imp.domain in ("", "ai.onnx") for imp in model.opset_import)
    opset = _default_opset(model)
    if not has_default:
        model.opset_import.append(helper.make_opsetid("", opset))

    keep = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    new_fn = paramramp_function(opset)
    del model.functions[:]
    model.functions.extend(keep)
    model.functions.append(new_fn)

    found = False
    for imp in model.opset_import:
        if imp.domain == DOMAIN:
            imp.version = VERSION
            found = True
    if not found:
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
    # model-local functions need IR >= 8
    if model.ir_version < 8:
        model.ir_version = 8
    return model


# ---------------------------------------------------------------------------------------
# validation helpers for importers
# ---------------------------------------------------------------------------------------
class ParamRampParams(NamedTuple):
    """Result of :func:`validate_paramramp_node`."""

    eta: float
    #: R as stored (float array, its own shape)
    r: np.ndarray
    #: ``max(R, R_MIN)`` broadcast to the sample shape (float64); ``None`` when the
    #: sample shape is not fully known
    r_effective: Optional[np.ndarray]


def is_paramramp_node(node: onnx.NodeProto) -> bool:
    return node.op_type == OP_TYPE and node.domain == DOMAIN


def _check_eta(eta) -> float:
    try:
        eta_f = float(eta)
    except (TypeError, ValueError):
        raise ParamRampError(f"ParamRamp eta must be a float, got {eta!r}") from None
    if not np.isfinite(eta_f):
        raise ParamRampError(f"ParamRamp eta must be finite, got {eta_f}")
    if eta_f < 0.0:
        raise ParamRampError(f"ParamRamp eta must be >= 0 (leak slope in [0, 1]), got {eta_f}")
    if eta_f > 1.0:
        raise ParamRampError(f"ParamRamp eta must be <= 1 (leak slope in [0, 1]), got {eta_f}")
    return eta_f


def paramramp_eta(node: onnx.NodeProto) -> float:
    """The (validated) ``eta`` attribute of a ParamRamp node; 0.0 when absent."""
    for a in node.attribute:
        if a.name == "eta":
            if a.type == onnx.AttributeProto.FLOAT:
                return _check_eta(a.f)
            if a.type == onnx.AttributeProto.INT:
                return _check_eta(a.i)
            raise ParamRampError(
                f"ParamRamp node {node.name!r}: attribute 'eta' must be a float, "
                f"got attribute type {onnx.AttributeProto.AttributeType.Name(a.type)}"
            )
    return 0.0


def _dim_value(d) -> Optional[int]:
    """int for a known dim; None for unknown (None, str/symbolic, <0, dim_param)."""
    if d is None or isinstance(d, str):
        return None
    if hasattr(d, "HasField"):  # TensorShapeProto.Dimension
        return int(d.dim_value) if d.HasField("dim_value") else None
    try:
        d = int(d)
    except (TypeError, ValueError):
        return None
    return d if d >= 0 else None


def validate_paramramp_node(
    node: onnx.NodeProto,
    r_value,
    x_shape: Sequence[Union[int, str, None]],
) -> ParamRampParams:
    """Check a ParamRamp node the way importers need it; return its parameters.

    Parameters
    ----------
    node: the ``onnxverify::ParamRamp`` node (exactly 2 inputs, 1 output).
    r_value: the value of its ``R`` input (numpy array or ``onnx.TensorProto``).
    x_shape: the *full* shape of ``X`` including the batch axis (``x_shape[0]``); unknown
        dims may be ``None``, strings (symbolic) or negative ints, and are not checked.

    R shape rule: ``R.shape`` must equal the sample shape ``x_shape[1:]`` or be
    broadcastable to it without adding axes (``R.ndim <= len(x_shape) - 1`` and every
    trailing-aligned dim of R is 1 or equal to the sample dim).  R is never broadcast
    over the batch axis.

    Raises :class:`ParamRampError` for: wrong node type / arity, eta < 0, eta > 1, eta not
    finite, R not a float array, R with non-finite values, wrongly shaped R.
    """
    if not is_paramramp_node(node):
        raise ParamRampError(
            f"not a {DOMAIN}::{OP_TYPE} node: {node.domain or 'ai.onnx'}::{node.op_type} "
            f"({node.name!r})"
        )
    label = f"ParamRamp node {node.name!r}" if node.name else "ParamRamp node"
    if len(node.input) != 2 or not node.input[1]:
        raise ParamRampError(f"{label}: expects 2 inputs (X, R), got {list(node.input)}")
    if len(node.output) != 1:
        raise ParamRampError(f"{label}: expects 1 output, got {list(node.output)}")
    try:
        eta = paramramp_eta(node)
    except ParamRampError as e:
        raise ParamRampError(f"{label}: {e}") from None

    if isinstance(r_value, onnx.TensorProto):
        r = onnx.numpy_helper.to_array(r_value)
    else:
        r = np.asarray(r_value)
    if r.dtype.kind != "f":
        raise ParamRampError(f"{label}: R ({node.input[1]!r}) must be a float tensor, got {r.dtype}")
    if not np.all(np.isfinite(r)):
        raise ParamRampError(f"{label}: R ({node.input[1]!r}) contains non-finite values")

    x_shape = list(x_shape)
    if len(x_shape) < 1:
        raise ParamRampError(f"{label}: X must have a batch axis, got shape {tuple(x_shape)}")
    sample = [_dim_value(d) for d in x_shape[1:]]
    shown = tuple("?" if d is None else d for d in sample)
    expl = (
        f"{label}: R ({node.input[1]!r}) has shape {tuple(r.shape)}, but it must equal the "
        f"sample shape of X {shown} (X shape without its batch axis) or be broadcastable "
        f"to it without adding axes"
    )
    if r.ndim > len(sample):
        raise ParamRampError(expl)
    for rd, sd in zip(reversed(r.shape), reversed(sample)):
        if rd == 1 or sd is None:
            continue
        if rd != sd:
            raise ParamRampError(expl)

    r_eff = None
    if all(d is not None for d in sample):
        r_eff = np.broadcast_to(np.maximum(r.astype(np.float64), R_MIN), tuple(sample)).copy()
    return ParamRampParams(eta=eta, r=r, r_effective=r_eff)


# ---------------------------------------------------------------------------------------
# numpy reference
# ---------------------------------------------------------------------------------------
def paramramp_reference(x, r, eta: float = 0.0) -> np.ndarray:
    """``eta*x + (1-eta)*min(max(x,0), max(r,1e-4))``; r broadcasts over the batch axis.

    Computed in the dtype of ``x`` (float32 inputs give float32 output).
    """
    x = np.asarray(x)
    dt = x.dtype if x.dtype.kind == "f" else np.float64
    x = x.astype(dt, copy=False)
    r = np.maximum(np.asarray(r, dtype=dt), dt.type(R_MIN))
    eta_d = dt.type(eta)
    return eta_d * x + (dt.type(1) - eta_d) * np.minimum(np.maximum(x, dt.type(0)), r)
