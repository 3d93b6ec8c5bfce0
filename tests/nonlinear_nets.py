"""Small random ONNX networks using the nonlinear ops of issue 10 (tests/test_ops_nonlinear.py
and benchmarks/op_widths.py). Each builder takes a seed and returns ``(model, (low, high),
eps)``: the input range and a box radius that keeps the bounds informative."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from nets import Builder


def _finish(b: Builder, out, opset, shape_out=None):
    g = helper.make_graph(b.nodes, "nonlinear", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["N"] + list(b.input_shape))],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape_out)], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _mm(b, x, n_in, n_out, scale=1.0):
    w = (b.rng.normal(0, 1.0 / np.sqrt(n_in), (n_in, n_out)) * scale).astype(np.float32)
    y = b.node("MatMul", [x, b.const(w)])
    return b.node("Add", [y, b.const((b.rng.normal(0, 0.1, n_out)).astype(np.float32))])


def _layernorm17(b, x, D):
    return b.node("LayerNormalization", [x, b.const(b.rng.uniform(0.5, 1.5, D).astype(np.float32)),
                                         b.const(b.rng.normal(0, 0.1, D).astype(np.float32))], axis=-1, epsilon=1e-5)


def _layernorm_decomposed(b, x, D, reduce_mean=False):
    """What older exporters write: mean, Sub, Pow 2, mean, Add eps, Sqrt, Div, Mul, Add."""
    def mean(v):
        if reduce_mean:
            return b.node("ReduceMean", [v], axes=[-1], keepdims=1)
        return b.node("MatMul", [v, b.const(np.full((D, 1), 1.0 / D, np.float32))])

    mu = mean(x)
    c = b.node("Sub", [x, mu])
    var = mean(b.node("Pow", [c, b.const(np.array(2.0, np.float32))]))
    sd = b.node("Sqrt", [b.node("Add", [var, b.const(np.array(1e-5, np.float32))])])
    y = b.node("Div", [c, sd])
    y = b.node("Mul", [y, b.const(b.rng.uniform(0.5, 1.5, D).astype(np.float32))])
    return b.node("Add", [y, b.const(b.rng.normal(0, 0.1, D).astype(np.float32))])


def transformer(seed, S=3, D=4):
    """x (S, D) -> LayerNorm17 -> one attention head (Q K^T / sqrt D, Softmax, P V) -> output
    projection -> residual -> decomposed LayerNorm -> Gelu MLP -> residual -> Flatten -> 3."""
    b = Builder(seed, (S, D), opset=20)
    h = _layernorm17(b, "x", D)
    q, k, v = (_mm(b, h, D, D) for _ in range(3))
    kt = b.node("Transpose", [k], perm=[0, 2, 1])
    scores = b.node("Mul", [b.node("MatMul", [q, kt]), b.const(np.array(1.0 / np.sqrt(D), np.float32))])
    p = b.node("Softmax", [scores], axis=-1)
    att = _mm(b, b.node("MatMul", [p, v]), D, D)
    r = b.node("Add", ["x", att])
    h2 = _layernorm_decomposed(b, r, D)
    mlp = _mm(b, b.node("Gelu", [_mm(b, h2, D, 2 * D)]), 2 * D, D)
    r2 = b.node("Add", [r, mlp])
    flat = b.node("Flatten", [r2], axis=1)
    out = _mm(b, flat, S * D, 3)
    return _finish(b, out, 20), (-1.0, 1.0), 0.02


def trig(seed, n=4, h=6):
    """x (4) -> Sin(W1 x) * Cos(W2 x) (a product of two computed tensors) -> W3 -> Exp(0.5 .) /
    (1 + Abs(W4 x)) (a quotient) -> W5 -> 3."""
    b = Builder(seed, (n,), opset=13)
    s = b.node("Sin", [_mm(b, "x", n, h, 2.0)])
    c = b.node("Cos", [_mm(b, "x", n, h, 2.0)])
    prod = b.node("Mul", [s, c])
    e = b.node("Exp", [_mm(b, prod, h, h, 0.5)])
    den = b.node("Add", [b.node("Abs", [_mm(b, "x", n, h)]), b.const(np.array(1.0, np.float32))])
    q = b.node("Div", [e, den])
    out = _mm(b, q, h, 3)
    return _finish(b, out, 13), (-1.0, 1.0), 0.05


def _chain(ops, opset=13, n=5, h=7, eps=0.1):
    """x -> W -> op_1 -> W -> op_2 -> ... -> W -> 3; ops are (op_type, attrs, extra inputs[,
    "direct"]): a direct op reads the previous op's output (no W in between: Log / Sqrt /
    Reciprocal after a positive op)."""
    def build(seed):
        b = Builder(seed, (n,), opset=opset)
        x, width = "x", n
        for op, attrs, extra, *direct in ops:
            z = x if direct else _mm(b, x, width, h, 1.5)
            x = b.node(op, [z] + [b.const(np.asarray(v, np.float32)) if v is not None else "" for v in extra], **attrs)
            width = h
        return _finish(b, _mm(b, x, width, 3), opset), (-1.0, 1.0), eps

    return build


def softmax_net(seed, form="pairwise", n=4, k=5):
    """x (4) -> W -> softmax over 5 logits -> W -> 3; ``form``: the Softmax op (imported as
    1 / sum exp(x_j - x_i)) or exp(z) * (1 / sum exp(z)) written out (a product)."""
    b = Builder(seed, (n,), opset=13)
    z = _mm(b, "x", n, k, 2.0)
    if form == "pairwise":
        p = b.node("Softmax", [z], axis=-1)
    else:
        e = b.node("Exp", [z])
        s = b.node("MatMul", [e, b.const(np.ones((k, 1), np.float32))])
        p = b.node("Mul", [e, b.node("Reciprocal", [s])])
    return _finish(b, _mm(b, p, k, 3), 13), (-1.0, 1.0), 0.05


def layernorm_pattern_net(seed, reduce_mean=False, S=2, D=5):
    return layernorm_net(seed, "decomposed", reduce_mean, S, D)


def layernorm_net(seed, form="op17", reduce_mean=False, S=2, D=5):
    """x (S, D) -> W -> LayerNorm (the opset-17 op, or the decomposed pattern) -> W -> 3."""
    b = Builder(seed, (S, D), opset=17 if form == "op17" else 13)
    z = _mm(b, "x", D, D, 2.0)
    h = _layernorm17(b, z, D) if form == "op17" else _layernorm_decomposed(b, z, D, reduce_mean=reduce_mean)
    flat = b.node("Flatten", [h], axis=1)
    return _finish(b, _mm(b, flat, S * D, 3), 17 if form == "op17" else 13), (-1.0, 1.0), 0.05


BUILDERS = {
    "transformer": transformer,
    "trig": trig,
    "softmax": softmax_net,
    "log_softmax_axis1": None,  # filled below
    "chain_exp_log_sqrt": _chain([("Softplus", {}, ()), ("Log", {}, (), "direct"), ("Exp", {}, ()),
                                  ("Sqrt", {}, (), "direct"), ("Exp", {}, ()), ("Reciprocal", {}, (), "direct")],
                                 eps=0.05),
    "chain_pow": _chain([("Pow", {}, (2.0,)), ("Pow", {}, (3.0,)), ("Softplus", {}, ()),
                         ("Pow", {}, (0.5,), "direct"), ("Pow", {}, (-1.5,), "direct")], eps=0.05),
    "chain_piecewise": _chain([("Clip", {}, (0.0, 6.0)), ("HardSigmoid", {}, ()), ("HardSwish", {}, ()),
                               ("Abs", {}, ()), ("Neg", {}, ())], opset=14),
    "chain_elu_gelu": _chain([("Elu", {"alpha": 0.7}, ()), ("Selu", {}, ()), ("Celu", {}, ()), ("Gelu", {}, ()),
                              ("Erf", {}, ())], opset=20),
    "chain_steps": _chain([("Sign", {}, ()), ("Floor", {}, ()), ("Ceil", {}, ()), ("Round", {}, ())], eps=0.1),
}


def _log_softmax(seed):
    b = Builder(seed, (2, 4), opset=13)
    z = _mm(b, "x", 4, 4, 2.0)
    p = b.node("LogSoftmax", [z], axis=1)
    flat = b.node("Flatten", [p], axis=1)
    return _finish(b, _mm(b, flat, 8, 3), 13), (-1.0, 1.0), 0.05


BUILDERS["log_softmax_axis1"] = _log_softmax


def _gelu_erf_form(seed, n=4, h=6):
    """GELU as torch exports it below opset 20: ``x * 0.5 * (1 + erf(x / sqrt 2))`` (Div, Erf,
    Add, Mul by a computed tensor, Mul)."""
    b = Builder(seed, (n,), opset=13)
    z = _mm(b, "x", n, h, 1.5)
    e = b.node("Erf", [b.node("Div", [z, b.const(np.array(np.sqrt(2.0), np.float32))])])
    g = b.node("Mul", [b.node("Mul", [z, b.node("Add", [e, b.const(np.array(1.0, np.float32))])]),
                       b.const(np.array(0.5, np.float32))])
    return _finish(b, _mm(b, g, h, 3), 13), (-1.0, 1.0), 0.1


BUILDERS["gelu_erf_form"] = _gelu_erf_form
