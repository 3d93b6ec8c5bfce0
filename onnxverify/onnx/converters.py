"""One converter per ONNX op type: ONNX node on computed tensors -> IR node(s).

A converter receives the import context, the ONNX node, its attributes and a label for
messages. Converters are keyed by ``(domain, op_type)`` in :data:`CONVERTERS`.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import ModelError

CONVERTERS: dict = {}


def converter(*op_types, domain=""):
    def deco(fn):
        for op in op_types:
            CONVERTERS[(domain, op)] = fn
            if domain == "":
                CONVERTERS[("ai.onnx", op)] = fn
        return fn
    return deco


def convert_node(ctx, node, attrs, label):
    CONVERTERS[(node.domain, node.op_type)](ctx, node, attrs, label)


def _fail(label, op, msg):
    raise ModelError(f"node {label} ({op}): {msg}")


def _sample_param(c: np.ndarray, out_rank: int, label, op) -> np.ndarray:
    """A constant broadcast against a ``(batch, *sample)`` tensor of rank ``out_rank``,
    with its batch axis removed: the result broadcasts against the sample shape."""
    c = np.asarray(c, dtype=np.float32)
    if c.ndim > out_rank:
        _fail(label, op, f"constant of shape {c.shape} broadcasts beyond the tensor rank {out_rank}")
    if c.ndim == out_rank:
        if c.shape[0] != 1:
            _fail(label, op, f"constant of shape {c.shape} varies along the batch axis")
        c = c[0]
    return c


# ---- identity-like -------------------------------------------------------------------------
@converter("Identity", "Dropout", "Cast")
def _identity(ctx, node, attrs, label):
    if node.op_type == "Cast" and attrs.get("to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        _fail(label, "Cast", "casts of computed tensors to non-float types are not supported")
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        ctx.consts[node.output[1]] = np.ones((1,) + ctx.shape_of(node.input[0]), dtype=bool)
    ctx.alias[node.output[0]] = ctx.computed(node.input[0])


@converter("Shape")
def _shape(ctx, node, attrs, label):
    full = np.array((1,) + ctx.shape_of(node.input[0]), dtype=np.int64)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    ctx.consts[node.output[0]] = full[start:end]


# ---- linear ---------------------------------------------------------------------------------
@converter("Gemm")
def _gemm(ctx, node, attrs, label):
    a, b = node.input[0], node.input[1]
    if ctx.is_const(a) or not ctx.is_const(b):
        _fail(label, "Gemm", "only Gemm(computed A, constant B) is supported")
    if attrs.get("transA", 0):
        _fail(label, "Gemm", "transA=1 on a computed input mixes the batch axis")
    if len(ctx.shape_of(a)) != 1:
        _fail(label, "Gemm", f"input A must be 2-D (batch, k), got sample shape {ctx.shape_of(a)}")
    B = ctx.const(b).astype(np.float32)
    W = (B if attrs.get("transB", 0) else B.T) * np.float32(attrs.get("alpha", 1.0))
    bias = np.zeros(W.shape[0], dtype=np.float32)
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2]).astype(np.float32) * np.float32(attrs.get("beta", 1.0))
        bias = bias + np.broadcast_to(_sample_param(c, 2, label, "Gemm"), bias.shape)
    ctx.add(node.output[0], "Linear", [ctx.computed(a)], {"weight": np.ascontiguousarray(W), "bias": bias}, source=label)


@converter("MatMul")
def _matmul(ctx, node, attrs, label):
    a, b = node.input
    if ctx.is_const(a) or not ctx.is_const(b):
        _fail(label, "MatMul", "only MatMul(computed, constant matrix) is supported")
    B = ctx.const(b).astype(np.float32)
    if B.ndim != 2:
        _fail(label, "MatMul", f"the constant operand must be a matrix, got shape {B.shape}")
    if len(ctx.shape_of(a)) < 1 or ctx.shape_of(a)[-1] != B.shape[0]:
        _fail(label, "MatMul", f"shape mismatch: {ctx.shape_of(a)} @ {B.shape}")
    ctx.add(node.output[0], "Linear", [ctx.computed(a)],
            {"weight": np.ascontiguousarray(B.T), "bias": np.zeros(B.shape[1], dtype=np.float32)}, source=label)


def _conv_pads(attrs, in_hw, kernel, stride, dilation, label):
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        p = list(attrs.get("pads", [0, 0, 0, 0]))
        return (p[0], p[1], p[2], p[3])
    if auto == "VALID":
        return (0, 0, 0, 0)
    pads = []
    for size, k, s, d in zip(in_hw, kernel, stride, dilation):
        out = -(-size // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
    return (pads[0][0], pads[1][0], pads[0][1], pads[1][1])


@converter("Conv")
def _conv(ctx, node, attrs, label):
    x, w = node.input[0], node.input[1]
    if ctx.is_const(x) or not ctx.is_const(w):
        _fail(label, "Conv", "only Conv(computed X, constant W) is supported")
    W = ctx.const(w).astype(np.float32)
    shape = ctx.shape_of(x)
    if W.ndim != 4 or len(shape) != 3:
        _fail(label, "Conv", f"only 2-D convolution is supported (X sample shape {shape}, W {W.shape})")
    kernel = tuple(W.shape[2:])
    stride = tuple(attrs.get("strides", [1, 1]))
    dilation = tuple(attrs.get("dilations", [1, 1]))
    groups = int(attrs.get("group", 1))
    if shape[0] != W.shape[1] * groups:
        _fail(label, "Conv", f"input has {shape[0]} channels, weight expects {W.shape[1] * groups}")
    pads = _conv_pads(attrs, shape[1:], kernel, stride, dilation, label)
    bias = ctx.const(node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2] else np.zeros(W.shape[0], np.float32)
    ctx.add(node.output[0], "Conv", [ctx.computed(x)], {"weight": W, "bias": bias},
            {"stride": stride, "pads": pads, "dilation": dilation, "groups": groups}, source=label)


@converter("BatchNormalization")
def _batchnorm(ctx, node, attrs, label):
    x = node.input[0]
    gamma, beta, mean, var = (ctx.const(n).astype(np.float64) for n in node.input[1:5])
    if attrs.get("training_mode", 0):
        _fail(label, "BatchNormalization", "training_mode=1 is not supported (export in eval mode)")
    scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
    shift = beta - mean * scale
    rank = len(ctx.shape_of(x))
    bshape = (-1,) + (1,) * (rank - 1)
    ctx.add(node.output[0], "Affine", [ctx.computed(x)],
            {"scale": scale.astype(np.float32).reshape(bshape), "shift": shift.astype(np.float32).reshape(bshape)}, source=label)


# ---- elementwise arithmetic ---------------------------------------------------------------
@converter("Add", "Sub", "Mul", "Div")
def _arith(ctx, node, attrs, label):
    op = node.op_type
    a, b = node.input
    if not ctx.is_const(a) and not ctx.is_const(b):
        if op in ("Mul", "Div"):
            _fail(label, op, "product/quotient of two computed tensors is not supported")
        sa, sb = ctx.shape_of(a), ctx.shape_of(b)
        if sa != sb:
            _fail(label, op, f"operands have different shapes {sa} and {sb} (broadcasting between computed tensors is not supported)")
        ctx.add(node.output[0], op, [ctx.computed(a), ctx.computed(b)], source=label)
        return
    x, c, const_first = (b, ctx.const(a), True) if ctx.is_const(a) else (a, ctx.const(b), False)
    rank = len(ctx.shape_of(x)) + 1
    full = np.broadcast_shapes(np.shape(c), (1,) + ctx.shape_of(x))
    if tuple(full) != (1,) + ctx.shape_of(x):
        _fail(label, op, f"constant of shape {np.shape(c)} would change the tensor shape to {full}")
    c = _sample_param(c, rank, label, op).astype(np.float64)
    one, zero = np.ones_like(c), np.zeros_like(c)
    if op == "Add":
        scale, shift = one, c
    elif op == "Sub":
        scale, shift = (-one, c) if const_first else (one, -c)
    elif op == "Mul":
        scale, shift = c, zero
    else:
        if const_first:
            _fail(label, "Div", "constant / computed tensor is not supported")
        scale, shift = 1.0 / c, zero
    params = {"scale": scale.astype(np.float32), "shift": shift.astype(np.float32)}
    ctx.add(node.output[0], "Affine", [ctx.computed(x)], params, {"onnx_op": op}, source=label)


# ---- activations ----------------------------------------------------------------------------
@converter("Relu", "Sigmoid", "Tanh")
def _activation(ctx, node, attrs, label):
    ctx.add(node.output[0], node.op_type, [ctx.computed(node.input[0])], source=label)


@converter("LeakyRelu")
def _leaky(ctx, node, attrs, label):
    alpha = float(attrs.get("alpha", 0.01))
    if alpha < 0:
        _fail(label, "LeakyRelu", f"alpha={alpha} < 0 makes the activation non-monotone (unsupported)")
    ctx.add(node.output[0], "LeakyRelu", [ctx.computed(node.input[0])], attrs={"alpha": alpha}, source=label)


@converter("ParamRamp", domain="onnxverify")
def _paramramp(ctx, node, attrs, label):
    if len(node.input) != 2 or not node.input[1]:
        _fail(label, "ParamRamp", f"expects 2 inputs (X, R), got {len(node.input)}")
    x, r = node.input[0], node.input[1]
    if not ctx.is_const(r):
        _fail(label, "ParamRamp", "R must be a constant (an initializer)")
    eta = float(attrs.get("eta", 0.0))
    if not 0.0 <= eta <= 1.0:
        _fail(label, "ParamRamp", f"eta={eta} must lie in [0, 1]")
    R = ctx.const(r).astype(np.float32)
    shape = ctx.shape_of(x)
    if R.ndim == len(shape) + 1 and R.shape[0] == 1:
        R = R[0]
    try:
        R = np.ascontiguousarray(np.broadcast_to(R, shape))
    except ValueError:
        _fail(label, "ParamRamp", f"R has shape {ctx.const(r).shape}, expected the sample shape {shape} of X")
    ctx.add(node.output[0], "ParamRamp", [ctx.computed(x)], {"r": R}, {"eta": eta}, source=label)


# ---- shape ------------------------------------------------------------------------------------
def _reshape_to(ctx, node, x, sample_shape, label):
    size = int(np.prod(ctx.shape_of(x), dtype=np.int64))
    if int(np.prod(sample_shape, dtype=np.int64)) != size:
        _fail(label, node.op_type, f"cannot reshape sample shape {ctx.shape_of(x)} to {tuple(sample_shape)}")
    ctx.add(node.output[0], "Reshape", [ctx.computed(x)], source=label, shape=tuple(int(d) for d in sample_shape))


@converter("Flatten")
def _flatten(ctx, node, attrs, label):
    x = node.input[0]
    shape = ctx.shape_of(x)
    axis = attrs.get("axis", 1)
    axis = axis + len(shape) + 1 if axis < 0 else axis
    if axis == 0 or int(np.prod(shape[: axis - 1], dtype=np.int64)) != 1:
        _fail(label, "Flatten", f"axis={attrs.get('axis', 1)} would merge the batch axis into the features")
    _reshape_to(ctx, node, x, (int(np.prod(shape, dtype=np.int64)),), label)


@converter("Reshape")
def _reshape(ctx, node, attrs, label):
    x, s = node.input
    if not ctx.is_const(s):
        _fail(label, "Reshape", "the target shape must be constant (or foldable shape arithmetic)")
    target = [int(v) for v in ctx.const(s)]
    shape = ctx.shape_of(x)
    full_in = (1,) + shape
    if not attrs.get("allowzero", 0):
        target = [full_in[k] if v == 0 and k < len(full_in) else v for k, v in enumerate(target)]
    if not target or target[0] not in (1, -1):
        _fail(label, "Reshape", f"target shape {target} does not keep the leading batch axis")
    rest = target[1:]
    size = int(np.prod(shape, dtype=np.int64))
    if target[0] == -1 and -1 not in rest:
        pass
    elif rest.count(-1) == 1:
        known = int(np.prod([v for v in rest if v != -1], dtype=np.int64))
        rest = [size // known if v == -1 else v for v in rest]
    _reshape_to(ctx, node, x, tuple(rest), label)


@converter("Squeeze", "Unsqueeze")
def _squeeze(ctx, node, attrs, label):
    x = node.input[0]
    shape = list(ctx.shape_of(x))
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in ctx.const(node.input[1])]
    if node.op_type == "Squeeze":
        rank = len(shape) + 1
        axes = [a + rank if a < 0 else a for a in axes] if axes is not None else [k + 1 for k, d in enumerate(shape) if d == 1]
        if 0 in axes:
            _fail(label, "Squeeze", "squeezing the batch axis is not supported")
        new = [d for k, d in enumerate(shape) if k + 1 not in axes]
    else:
        rank = len(shape) + 1 + len(axes)
        axes = sorted(a + rank if a < 0 else a for a in axes)
        if 0 in axes:
            _fail(label, "Unsqueeze", "inserting an axis before the batch axis is not supported")
        new = [1] + shape
        for a in axes:
            new.insert(a, 1)
        new = new[1:]
    _reshape_to(ctx, node, x, tuple(new), label)


@converter("Transpose")
def _transpose(ctx, node, attrs, label):
    x = node.input[0]
    rank = len(ctx.shape_of(x)) + 1
    perm = list(attrs.get("perm", list(range(rank))[::-1]))
    if perm[0] != 0:
        _fail(label, "Transpose", f"perm {perm} moves the batch axis")
    ctx.add(node.output[0], "Transpose", [ctx.computed(x)], attrs={"perm": tuple(p - 1 for p in perm[1:])}, source=label)


@converter("Concat")
def _concat(ctx, node, attrs, label):
    if any(ctx.is_const(i) for i in node.input):
        _fail(label, "Concat", "concatenating a computed tensor with a constant is not supported")
    rank = len(ctx.shape_of(node.input[0])) + 1
    axis = attrs["axis"] + rank if attrs["axis"] < 0 else attrs["axis"]
    if axis == 0:
        _fail(label, "Concat", "concatenation along the batch axis is not supported")
    ctx.add(node.output[0], "Concat", [ctx.computed(i) for i in node.input], attrs={"axis": axis - 1}, source=label)


@converter("Pad")
def _pad(ctx, node, attrs, label):
    x = node.input[0]
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        _fail(label, "Pad", f"mode={mode!r} is not supported (only 'constant')")
    if "pads" in attrs:
        pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads = [int(v) for v in ctx.const(node.input[1])]
        value = float(ctx.const(node.input[2]).reshape(-1)[0]) if len(node.input) > 2 and node.input[2] else 0.0
        if len(node.input) > 3 and node.input[3]:
            _fail(label, "Pad", "the 'axes' input is not supported")
    rank = len(ctx.shape_of(x)) + 1
    if len(pads) != 2 * rank or any(p < 0 for p in pads):
        _fail(label, "Pad", f"pads {pads} are not 2*rank non-negative values")
    if pads[0] or pads[rank]:
        _fail(label, "Pad", "padding the batch axis is not supported")
    widths = [(pads[k], pads[k + rank]) for k in range(1, rank)]
    ctx.add(node.output[0], "Pad", [ctx.computed(x)], attrs={"widths": widths, "value": value}, source=label)


# ---- pooling ----------------------------------------------------------------------------------
def _pool_attrs(ctx, node, attrs, label):
    shape = ctx.shape_of(node.input[0])
    if len(shape) != 3:
        _fail(label, node.op_type, f"only 2-D pooling is supported (sample shape {shape})")
    kernel = tuple(attrs["kernel_shape"])
    stride = tuple(attrs.get("strides", [1, 1]))
    dilation = tuple(attrs.get("dilations", [1, 1]))
    pads = _conv_pads(attrs, shape[1:], kernel, stride, dilation, label)
    return kernel, stride, dilation, pads


@converter("MaxPool")
def _maxpool(ctx, node, attrs, label):
    if len(node.output) > 1 and node.output[1]:
        _fail(label, "MaxPool", "the Indices output is not supported")
    kernel, stride, dilation, pads = _pool_attrs(ctx, node, attrs, label)
    ctx.add(node.output[0], "MaxPool", [ctx.computed(node.input[0])],
            attrs={"kernel": kernel, "stride": stride, "pads": pads, "dilation": dilation,
                   "ceil_mode": bool(attrs.get("ceil_mode", 0))}, source=label)


@converter("AveragePool")
def _avgpool(ctx, node, attrs, label):
    kernel, stride, dilation, pads = _pool_attrs(ctx, node, attrs, label)
    if dilation != (1, 1):
        _fail(label, "AveragePool", "dilations are not supported")
    ctx.add(node.output[0], "AvgPool", [ctx.computed(node.input[0])],
            attrs={"kernel": kernel, "stride": stride, "pads": pads, "ceil_mode": bool(attrs.get("ceil_mode", 0)),
                   "count_include_pad": bool(attrs.get("count_include_pad", 0))}, source=label)


@converter("GlobalAveragePool")
def _gap(ctx, node, attrs, label):
    shape = ctx.shape_of(node.input[0])
    if len(shape) != 3:
        _fail(label, "GlobalAveragePool", f"only 2-D inputs are supported (sample shape {shape})")
    ctx.add(node.output[0], "AvgPool", [ctx.computed(node.input[0])],
            attrs={"kernel": tuple(shape[1:]), "stride": (1, 1), "pads": (0, 0, 0, 0), "ceil_mode": False,
                   "count_include_pad": False}, source=label)
