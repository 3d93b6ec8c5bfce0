"""ParamRamp on the torch side: module, ONNX export emitting the custom op, onnx2torch import.

Import this module only when torch is wanted (it imports torch at module level; the
ONNX-side API lives in :mod:`onnxverify.converters.paramramp_onnx`).  Importing it
registers the onnx2torch converter for ``onnxverify::ParamRamp`` (if onnx2torch is
installed).

Export route (:func:`export_onnx`)
----------------------------------
The *dynamo* exporter (``torch.onnx.export(..., dynamo=True)``, the default and the
maintained path in torch >= 2.9; the TorchScript exporter is deprecated) with

* a ``torch.library`` custom op ``onnxverify::param_ramp(Tensor x, Tensor r, float eta)``
  (with a fake/meta kernel).  :class:`ParamRamp` calls it *only while exporting*
  (inside :func:`export_onnx`); in normal use its forward is plain differentiable torch
  code, so training, autograd and ``torch.compile`` never see the custom op;
* a ``custom_translation_table`` entry mapping that op to one ``onnxverify::ParamRamp``
  node (``eta`` attribute, ``R`` = the module's parameter, which the exporter writes as an
  initializer of the parameter's shape, i.e. the sample shape);
* post-processing: :func:`~onnxverify.converters.paramramp_onnx.attach_paramramp_function`,
  a structural check that every ParamRamp node reads an initializer ``R`` and carries the
  module's current ``eta``, then ``onnx.checker.check_model(full_check=True)`` and save.

The same function exports nets without ParamRamp (plain ReLU nets): it is the project's
general torch -> ONNX export.

Limits
------
* The exporter builds the graph at default-domain opset 18 (torchlib) and converts down
  when ``opset < 18``; opset 17 is converted fine (tested), lower opsets may fail to
  convert for some ops, in which case torch keeps opset 18 and :func:`export_onnx` emits a
  ``UserWarning`` (the model is still valid and runnable).  Opsets 18..21 are native.
* float32 only (the function body's constants are float32).
* ``dynamic_batch=True`` makes axis 0 of every input symbolic (``"batch"``); an example
  with batch size 1 is tiled to batch 2 for tracing (torch.export specialises size-1 dims).
  Models whose graph cannot be made batch-polymorphic fail in ``torch.export``.
* The module is exported in eval mode (every submodule's training flag is restored).
* ``torch.export`` restrictions apply (no data-dependent Python control flow).
* ``Reshape`` nodes get ``allowzero=1`` from the exporter; it is removed where the shape
  is a constant without zeros (no semantic change) because onnx2torch rejects it.
* onnx2torch (1.5.x) itself has no converters for some ops at opset 21 (e.g. Reshape-21),
  so models meant to go back through onnx2torch should be exported at opset 17..20.
* Models over 2 GB are saved with external data next to ``path`` (checked from the file).

onnx2torch import
-----------------
:func:`register_onnx2torch_converter` (run on import) maps each ``onnxverify::ParamRamp``
node to a :class:`ParamRamp` module whose ``r`` is a trainable ``nn.Parameter`` copied
from the node's ``R`` (an initializer, or a ``Constant`` output) and whose ``eta`` is the
node attribute (default 0.0); the node is validated with
:func:`~onnxverify.converters.paramramp_onnx.validate_paramramp_node` first.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import torch
from torch import nn

from .paramramp_onnx import (
    DOMAIN,
    OP_TYPE,
    R_MIN,
    VERSION,
    ParamRampError,
    attach_paramramp_function,
    is_paramramp_node,
    paramramp_opschema,
    validate_paramramp_node,
)

__all__ = [
    "ParamRamp",
    "paramramp_forward",
    "export_onnx",
    "register_onnx2torch_converter",
]


# ---------------------------------------------------------------------------------------
# math
# ---------------------------------------------------------------------------------------
def paramramp_forward(x: torch.Tensor, r: torch.Tensor, eta: float) -> torch.Tensor:
    """``eta*x + (1-eta)*min(relu(x), max(r, 1e-4))`` (differentiable in x and r)."""
    rc = r.clamp_min(R_MIN)
    return eta * x + (1.0 - eta) * torch.minimum(torch.relu(x), rc)


# ---------------------------------------------------------------------------------------
# torch.library custom op (used only while exporting)
# ---------------------------------------------------------------------------------------
_CUSTOM_OP_NAME = "onnxverify::param_ramp"


def _define_custom_op():
    ns = getattr(torch.ops, "onnxverify", None)
    if ns is not None:
        try:
            return getattr(ns, "param_ramp")
        except (AttributeError, RuntimeError):
            pass

    @torch.library.custom_op(_CUSTOM_OP_NAME, mutates_args=())
    def _param_ramp(x: torch.Tensor, r: torch.Tensor, eta: float) -> torch.Tensor:
        return paramramp_forward(x, r, eta)

    @_param_ramp.register_fake
    def _(x, r, eta):
        return torch.empty_like(x)

    def _setup_context(ctx, inputs, output):
        x, r, eta = inputs
        ctx.save_for_backward(x, r)
        ctx.eta = eta

    def _backward(ctx, grad):
        x, r = ctx.saved_tensors
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            rd = r.detach().requires_grad_(True)
            y = paramramp_forward(xd, rd, ctx.eta)
            gx, gr = torch.autograd.grad(y, (xd, rd), grad)
        return gx, gr, None

    _param_ramp.register_autograd(_backward, setup_context=_setup_context)
    return torch.ops.onnxverify.param_ramp


_param_ramp_op = _define_custom_op()

_export_state = threading.local()


def _exporting() -> bool:
    return getattr(_export_state, "depth", 0) > 0


@contextlib.contextmanager
def _export_mode():
    _export_state.depth = getattr(_export_state, "depth", 0) + 1
    try:
        yield
    finally:
        _export_state.depth -= 1


# ---------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------
class ParamRamp(nn.Module):
    """ParamRamp(eta, r): ``f(z) = eta*z + (1-eta)*min(max(z,0), r)``, r per neuron.

    Parameters
    ----------
    shape: shape of ``r`` -- the activation's shape without the batch axis (an int is
        taken as ``(shape,)``).  Any shape broadcastable to the sample shape works in
        torch, but the verifier expects the full sample shape.
    eta: leak slope in ``[0, 1]``; a plain float attribute, settable for schedules
        (``module.eta = 0.005``).
    r_init: initial value of every entry of ``r`` (a float), or an array/tensor of
        ``shape``.

    ``r`` (``nn.Parameter``) is clamped to ``>= 1e-4`` in every forward pass.
    """

    def __init__(self, shape, eta: float = 0.0, r_init=1.0):
        super().__init__()
        if isinstance(shape, (int, np.integer)):
            shape = (int(shape),)
        shape = tuple(int(s) for s in shape)
        if isinstance(r_init, (int, float)):
            data = torch.full(shape, float(r_init), dtype=torch.float32)
        else:
            data = torch.as_tensor(np.asarray(r_init) if not torch.is_tensor(r_init) else r_init)
            data = data.detach().clone().to(torch.float32)
            if tuple(data.shape) != shape:
                raise ParamRampError(
                    f"ParamRamp r_init has shape {tuple(data.shape)}, expected {shape}"
                )
        self.shape = shape
        self.r = nn.Parameter(data)
        self.eta = eta

    @property
    def eta(self) -> float:
        return self._eta

    @eta.setter
    def eta(self, value) -> None:
        if torch.is_tensor(value):
            value = value.item()
        v = float(value)
        if not np.isfinite(v) or v < 0.0 or v > 1.0:
            raise ParamRampError(f"ParamRamp eta must be in [0, 1], got {v}")
        self._eta = v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _exporting():
            return _param_ramp_op(x, self.r, self._eta)
        return paramramp_forward(x, self.r, self._eta)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, eta={self._eta:g}"


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------
_ONNX_OP = None


def _translation():
    """onnxscript translation of ``onnxverify::param_ramp`` -> one ``ParamRamp`` node."""
    global _ONNX_OP
    if _ONNX_OP is None:
        import onnxscript

        try:
            from onnxscript.values import Op  # public alias in some versions
        except ImportError:  # pragma: no cover
            from onnxscript._internal.values import Op
        opset = onnxscript.values.Opset(DOMAIN, VERSION)
        _ONNX_OP = Op(opset, OP_TYPE, paramramp_opschema())

    op = _ONNX_OP

    def param_ramp(x, r, eta: float = 0.0):
        return op(x, r, eta=float(eta))

    return param_ramp


def _as_args(example_input) -> Tuple[torch.Tensor, ...]:
    if torch.is_tensor(example_input):
        return (example_input,)
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input)
    raise TypeError(f"example_input must be a tensor or a tuple of tensors, got {type(example_input)}")


def _default_opset(model: onnx.ModelProto) -> Optional[int]:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def export_onnx(
    module: nn.Module,
    example_input,
    path: Union[str, os.PathLike, None],
    opset: int = 17,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
) -> onnx.ModelProto:
    """Export ``module`` to ONNX; every :class:`ParamRamp` becomes one ``onnxverify::ParamRamp``.

    Writes ``path`` (skipped when ``path`` is None) and returns the ``ModelProto``.
    The model has the ParamRamp function attached (stock onnxruntime runs it) and passes
    ``onnx.checker.check_model(model, full_check=True)``.  See the module docstring for
    the route and its limits.
    """
    args = _as_args(example_input)
    if dynamic_batch:
        tiled = []
        for a in args:
            if torch.is_tensor(a) and a.dim() >= 1 and a.shape[0] == 1:
                a = torch.cat([a, a], dim=0)
            tiled.append(a)
        args = tuple(tiled)
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if torch.is_tensor(a) and a.dim() >= 1 else None for a in args)
    else:
        dynamic_shapes = None

    ramps = {name: m for name, m in module.named_modules() if isinstance(m, ParamRamp)}
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with _export_mode(), _quiet_exporter_logs(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            program = torch.onnx.export(
                module,
                args,
                None,
                dynamo=True,
                opset_version=int(opset),
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table={_param_ramp_op.default: _translation()},
                optimize=True,
                verbose=False,
            )
    finally:
        for m, mode in modes:  # restore every submodule's own flag
            m.training = mode

    model = program.model_proto
    _drop_redundant_allowzero(model)
    got = _default_opset(model)
    if got != int(opset):
        # the exporter converts *before* its optimiser; the optimised graph (constant
        # shapes folded, allowzero dropped) often converts where the raw one did not
        try:
            converted = onnx.version_converter.convert_version(model, int(opset))
        except Exception:  # pylint: disable=broad-except
            converted = None
        if converted is not None and _default_opset(converted) == int(opset):
            model = converted
            got = int(opset)
    if got != int(opset):
        warnings.warn(
            f"export_onnx: requested default-domain opset {opset}, but the torch exporter "
            f"produced opset {got} and it could not be converted",
            UserWarning,
            stacklevel=2,
        )
    if ramps or any(is_paramramp_node(n) for n in model.graph.node):
        attach_paramramp_function(model)
    _check_exported_ramps(model, ramps)
    big = model.ByteSize() > 2**31 - 1024
    if not big:
        onnx.checker.check_model(model, full_check=True)

    if path is not None:
        path = os.fspath(path)
        if big:
            onnx.save_model(
                model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                location=os.path.basename(path) + ".data",
            )
            onnx.checker.check_model(path, full_check=True)
        else:
            onnx.save_model(model, path)
    return model


@contextlib.contextmanager
def _quiet_exporter_logs():
    """Silence the exporter's expected opset-18-then-convert-down log chatter."""
    names = ("torch.onnx._internal.exporter._compat", "onnxscript.version_converter")
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR + 1)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old):
            lg.setLevel(lv)


def _drop_redundant_allowzero(model: onnx.ModelProto) -> int:
    """Remove ``allowzero=1`` from Reshape nodes whose shape is a constant without zeros.

    The dynamo exporter writes ``allowzero=1`` on every Reshape (e.g. from ``Flatten``);
    it only matters when the target shape contains a 0, and onnx2torch (and other simple
    importers) reject it.  Returns the number of nodes changed.
    """
    consts = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    consts[n.output[0]] = a.t
    changed = 0
    for n in model.graph.node:
        if n.op_type != "Reshape" or n.domain not in ("", "ai.onnx") or len(n.input) < 2:
            continue
        az = [a for a in n.attribute if a.name == "allowzero"]
        if not az or az[0].i == 0 or n.input[1] not in consts:
            continue
        shape = onnx.numpy_helper.to_array(consts[n.input[1]])
        if np.all(shape != 0):
            n.attribute.remove(az[0])
            changed += 1
    return changed


def _check_exported_ramps(model: onnx.ModelProto, ramps: dict) -> None:
    """Every ParamRamp node reads an initializer R and carries one of the modules' eta."""
    nodes = [n for n in model.graph.node if is_paramramp_node(n)]
    if ramps and not nodes:
        raise RuntimeError("export_onnx: the model has ParamRamp modules but no ParamRamp node was exported")
    inits = {t.name: t for t in model.graph.initializer}
    vi = {v.name: v for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    etas = [m.eta for m in ramps.values()]
    for n in nodes:
        if len(n.input) != 2 or n.input[1] not in inits:
            raise RuntimeError(
                f"export_onnx: ParamRamp node {n.name!r} does not read its R from an initializer "
                f"(inputs {list(n.input)})"
            )
        r = onnx.numpy_helper.to_array(inits[n.input[1]])
        p = validate_paramramp_node(n, r, _value_info_shape(vi.get(n.input[0]), r.ndim))
        # the attribute is float32: compare at float32 precision
        if etas and not any(abs(p.eta - e) <= 1e-6 * max(1.0, abs(e)) for e in etas):
            raise RuntimeError(f"export_onnx: ParamRamp node {n.name!r} has eta {p.eta}, not a module eta")


def _value_info_shape(vi, r_ndim: int) -> list:
    """Shape from a ValueInfoProto (None for unknown dims); all-unknown if missing."""
    if vi is not None and vi.type.tensor_type.HasField("shape"):
        return [(d.dim_value if d.HasField("dim_value") else None) for d in vi.type.tensor_type.shape.dim]
    return [None] * (r_ndim + 1)


# ---------------------------------------------------------------------------------------
# onnx2torch converter
# ---------------------------------------------------------------------------------------
_REGISTERED = False


def _onnx2torch_convert(node, graph):
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    if len(node.input_values) != 2:
        raise ParamRampError(
            f"ParamRamp node {node.name!r}: expects 2 inputs (X, R), got {list(node.input_values)}"
        )
    x_name, r_name = node.input_values
    if r_name in graph.initializers:
        r = graph.initializers[r_name].to_numpy()
    else:
        r = None
        try:
            producer, _ = graph.value_as_node_output(r_name)
        except KeyError:
            producer = None
        if producer is not None and producer.operation_type == "Constant":
            value = producer.attributes.get("value")
            if value is not None and hasattr(value, "to_numpy"):
                r = value.to_numpy()
        if r is None:
            raise NotImplementedError(
                f"ParamRamp node {node.name!r}: R ({r_name!r}) must be an initializer or a Constant "
                f"to become a trainable parameter"
            )
    x_shape = _value_info_shape(graph.value_info.get(x_name), np.ndim(r))
    params = validate_paramramp_node(node.proto, r, x_shape)
    r = np.asarray(params.r, dtype=np.float32)
    module = ParamRamp(r.shape, eta=params.eta, r_init=r)
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=(x_name,), outputs=node.output_values),
    )


def register_onnx2torch_converter() -> bool:
    """Register the ``onnxverify::ParamRamp`` (version 1) converter with onnx2torch.

    Idempotent.  Returns False (and does nothing) if onnx2torch is not installed.
    """
    global _REGISTERED
    if _REGISTERED:
        return True
    try:
        from onnx2torch.node_converters import registry
    except ImportError:
        return False
    desc = registry.OperationDescription(domain=DOMAIN, operation_type=OP_TYPE, version=VERSION)
    if desc not in registry._CONVERTER_REGISTRY:  # pylint: disable=protected-access
        registry.add_converter(operation_type=OP_TYPE, version=VERSION, domain=DOMAIN)(_onnx2torch_convert)
    _REGISTERED = True
    return True


register_onnx2torch_converter()
