"""Model zoo as ONNX: DM-small / DM-medium / DM-large, CNN-7+BN and an MLP (PAPER_NOTES.md §3).

Models are built directly with :mod:`onnx.helper` (no torch): certified training always
starts from an ONNX file, so the networks of the paper and a user's own model train the
same way (onnx2torch -> torch).

Layout of a built model (names matter: training ties the verifier's IR to the onnx2torch
modules through them)::

    input (batch, C, H, W) float32
      conv1 [-> bn1] -> act1 -> conv2 [-> bn2] -> act2 ... -> flatten -> fcK [-> bnK] -> actK
      -> ... -> fc_out -> logits (batch, classes)

* ``activation``: ``relu`` (ONNX ``Relu``), ``leaky`` (``LeakyRelu(alpha=eta)``) or
  ``paramramp`` (``onnxverify::ParamRamp(X, R; eta)`` with ``R`` an initializer of the
  activation's sample shape, filled with ``r_init``, and the ParamRamp function attached).
* ``batchnorm``: ``BatchNormalization`` (inference form: gamma 1, beta 0, mean 0, var 1)
  after every conv / FC layer but the last, before the activation.  ``cnn7-bn`` has it by
  default; every other architecture can take it (``batchnorm=True``), as the fast recipe does.
* ``init``: ``default`` -- torch's default (weights and biases ``U(-1/sqrt(fan_in),
  1/sqrt(fan_in))``); ``ibp`` -- the fast recipe's IBP initialisation: every weight but the
  last layer's ``N(0, std^2)`` with ``std = sqrt(2 pi) / fan_in`` and zero biases (the last
  layer keeps the default).  Seeded by ``seed``.
* ``input_shape`` ``(C, H, W)`` (``(1, 8, 8)`` digits, ``(1, 28, 28)`` MNIST, ``(3, 32, 32)``
  CIFAR) and ``num_classes`` are free; the paddings of §3 keep every conv output >= 1x1 even
  for 1x1 inputs.  ``mlp`` takes any input shape (it flattens first).

ONNX: IR version 8, default-domain opset 17 (onnxruntime rejects newer IR versions), a
symbolic batch axis.  Metadata properties ``onnxverify.architecture``,
``onnxverify.activation``, ``onnxverify.batchnorm``, ``onnxverify.init`` record the recipe
(training copies them into the model card).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "ARCHITECTURES",
    "ACTIVATIONS",
    "ALIASES",
    "IR_VERSION",
    "OPSET",
    "Layer",
    "architecture_layers",
    "build_model",
    "canonical_name",
    "describe_architectures",
    "save_model",
]

IR_VERSION = 8
OPSET = 17
ACTIVATIONS = ("relu", "leaky", "paramramp")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Layer:
    """One hidden layer: ``kind`` "conv" (``channels``, ``kernel``, ``stride``, ``pad``) or "fc"
    (``channels`` = output features)."""

    kind: str
    channels: int
    kernel: int = 0
    stride: int = 1
    pad: int = 0


def _conv(c, k, s, p):
    return Layer("conv", c, k, s, p)


def _fc(n):
    return Layer("fc", n)


#: architecture -> (hidden layers, BN by default); the final FC to ``num_classes`` is implicit.
ARCHITECTURES: Dict[str, Tuple[Tuple[Layer, ...], bool]] = {
    "dm-small": ((_conv(16, 4, 2, 2), _conv(32, 4, 1, 2), _fc(100)), False),
    "dm-medium": ((_conv(32, 3, 1, 1), _conv(32, 4, 2, 2), _conv(64, 3, 1, 1), _conv(64, 4, 2, 2),
                   _fc(512), _fc(512)), False),
    "dm-large": ((_conv(64, 3, 1, 1), _conv(64, 3, 1, 1), _conv(128, 3, 2, 1), _conv(128, 3, 1, 1),
                  _conv(128, 3, 1, 1), _fc(512)), False),
    "cnn7-bn": ((_conv(64, 3, 1, 1), _conv(64, 3, 1, 1), _conv(128, 3, 2, 1), _conv(128, 3, 1, 1),
                 _conv(128, 3, 1, 1), _fc(512)), True),
    "mlp": ((_fc(100), _fc(100)), False),
}

ALIASES = {
    "small": "dm-small", "dm_small": "dm-small", "dmsmall": "dm-small",
    "medium": "dm-medium", "dm_medium": "dm-medium", "dmmedium": "dm-medium",
    "large": "dm-large", "dm_large": "dm-large", "dmlarge": "dm-large",
    "cnn7": "cnn7-bn", "cnn-7": "cnn7-bn", "cnn-7+bn": "cnn7-bn", "cnn7+bn": "cnn7-bn", "cnn7_bn": "cnn7-bn",
    "cnn-7-bn": "cnn7-bn",
}

_ACT_ALIASES = {"relu": "relu", "leaky": "leaky", "leakyrelu": "leaky", "leaky_relu": "leaky",
                "paramramp": "paramramp", "ramp": "paramramp", "param_ramp": "paramramp"}


def canonical_name(name: str) -> str:
    """The architecture key for ``name`` (case-insensitive; aliases like ``small``, ``cnn-7+bn``)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return key


def canonical_activation(activation: str) -> str:
    key = _ACT_ALIASES.get(str(activation).strip().lower())
    if key is None:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    return key


def architecture_layers(name: str, hidden: Optional[Sequence[int]] = None) -> Tuple[Tuple[Layer, ...], bool]:
    """``(hidden layers, batchnorm default)`` of an architecture; ``hidden`` overrides the MLP widths."""
    key = canonical_name(name)
    layers, bn = ARCHITECTURES[key]
    if hidden is not None:
        if key != "mlp":
            raise ValueError("hidden widths can only be given for the mlp architecture")
        layers = tuple(_fc(int(h)) for h in hidden)
        if any(layer.channels <= 0 for layer in layers):
            raise ValueError(f"hidden widths must be positive, got {list(hidden)}")
    return layers, bn


def describe_architectures() -> str:
    """One line per architecture (for ``onnxverify model --list``)."""
    lines = []
    for name, (layers, bn) in ARCHITECTURES.items():
        parts = []
        for lay in layers:
            if lay.kind == "conv":
                parts.append(f"conv {lay.channels} {lay.kernel}x{lay.kernel}/{lay.stride} p{lay.pad}")
            else:
                parts.append(f"FC {lay.channels}")
        parts.append("FC classes")
        lines.append(f"{name:<10} {' -> '.join(parts)}{'  (BN after every layer but the last)' if bn else ''}")
    return "\n".join(lines)


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


class _Builder:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: List[str], output: str, name: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs))
        return output


def _weights(rng, shape, fan_in: int, init: str, last: bool) -> Tuple[np.ndarray, np.ndarray]:
    if init == "ibp" and not last:
        std = math.sqrt(2 * math.pi) / fan_in
        return rng.normal(0.0, std, size=shape), np.zeros(shape[0])
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape), rng.uniform(-bound, bound, size=shape[0])


def build_model(
    name: str,
    activation: str = "relu",
    batchnorm: Optional[bool] = None,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    eta: float = 0.01,
    r_init: float = 1.0,
    init: str = "default",
    seed: int = 0,
    hidden: Optional[Sequence[int]] = None,
) -> onnx.ModelProto:
    """Build architecture ``name`` as an ONNX model (see the module docstring).

    ``eta``: LeakyReLU slope / ParamRamp leak (ignored for ``relu``); ``r_init``: initial
    ParamRamp bend point (training resets it from mean activations when eps starts);
    ``batchnorm=None`` takes the architecture's default.  Returns a checked ``ModelProto``.
    """
    key = canonical_name(name)
    act = canonical_activation(activation)
    layers, bn_default = architecture_layers(key, hidden)
    bn = bn_default if batchnorm is None else bool(batchnorm)
    if init not in ("default", "ibp"):
        raise ValueError(f"unknown init {init!r}; choose 'default' or 'ibp'")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    if act == "paramramp" and not float(r_init) > 0:
        raise ValueError(f"r_init must be > 0, got {r_init}")

    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    x = INPUT_NAME
    cur: Tuple[int, ...] = shape
    flat = False
    n_hidden = len(layers)
    for i, lay in enumerate(layers, start=1):
        if lay.kind == "conv":
            if flat:
                raise ValueError(f"{key}: a conv layer cannot follow an FC layer")
            c, h, w = cur
            ho, wo = _conv_out(h, lay.kernel, lay.stride, lay.pad), _conv_out(w, lay.kernel, lay.stride, lay.pad)
            if ho < 1 or wo < 1:
                raise ValueError(f"{key}: input {shape} is too small (conv{i} would give {ho}x{wo})")
            fan_in = c * lay.kernel * lay.kernel
            W, bias = _weights(rng, (lay.channels, c, lay.kernel, lay.kernel), fan_in, init, last=False)
            x = b.node("Conv", [x, b.init(f"conv{i}.weight", W), b.init(f"conv{i}.bias", bias)], f"conv{i}_out",
                       f"conv{i}", kernel_shape=[lay.kernel, lay.kernel], strides=[lay.stride, lay.stride],
                       pads=[lay.pad] * 4)
            cur = (lay.channels, ho, wo)
        else:
            if not flat:
                x = b.node("Flatten", [x], "flatten_out", "flatten", axis=1)
                cur = (int(np.prod(cur)),)
                flat = True
            fan_in = cur[0]
            W, bias = _weights(rng, (lay.channels, fan_in), fan_in, init, last=False)
            x = b.node("Gemm", [x, b.init(f"fc{i}.weight", W), b.init(f"fc{i}.bias", bias)], f"fc{i}_out",
                       f"fc{i}", transB=1)
            cur = (lay.channels,)
        if bn:
            ch = cur[0]
            x = b.node("BatchNormalization",
                       [x, b.init(f"bn{i}.weight", np.ones(ch)), b.init(f"bn{i}.bias", np.zeros(ch)),
                        b.init(f"bn{i}.running_mean", np.zeros(ch)), b.init(f"bn{i}.running_var", np.ones(ch))],
                       f"bn{i}_out", f"bn{i}", epsilon=1e-5, momentum=0.9)
        if act == "relu":
            x = b.node("Relu", [x], f"act{i}_out", f"act{i}")
        elif act == "leaky":
            x = b.node("LeakyRelu", [x], f"act{i}_out", f"act{i}", alpha=float(eta))
        else:
            from onnxverify.converters import make_paramramp_node

            r = b.init(f"act{i}.r", np.full(cur, float(r_init)))
            b.nodes.append(make_paramramp_node(x, r, f"act{i}_out", eta=float(eta), name=f"act{i}"))
            x = f"act{i}_out"
    if not flat:
        x = b.node("Flatten", [x], "flatten_out", "flatten", axis=1)
        cur = (int(np.prod(cur)),)
    k = n_hidden + 1
    W, bias = _weights(rng, (int(num_classes), cur[0]), cur[0], init, last=True)
    b.node("Gemm", [x, b.init(f"fc{k}.weight", W), b.init(f"fc{k}.bias", bias)], OUTPUT_NAME, f"fc{k}", transB=1)

    graph = helper.make_graph(
        b.nodes, key,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", int(num_classes)])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxverify.training", ir_version=IR_VERSION)
    if act == "paramramp":
        from onnxverify.converters import attach_paramramp_function

        attach_paramramp_function(model)
    meta = {"onnxverify.architecture": key, "onnxverify.activation": act, "onnxverify.batchnorm": str(bn).lower(),
            "onnxverify.init": init, "onnxverify.eta": repr(float(eta)), "onnxverify.seed": str(int(seed))}
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def model_metadata(model: onnx.ModelProto) -> Dict[str, str]:
    """The ``onnxverify.*`` metadata properties of a model (empty for foreign models)."""
    return {p.key[len("onnxverify."):]: p.value for p in model.metadata_props if p.key.startswith("onnxverify.")}


def save_model(model: onnx.ModelProto, path) -> None:
    onnx.save_model(model, str(path))
