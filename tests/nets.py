"""Random ONNX models covering every op the importer supports, built with onnx.helper.

Each builder takes a seed and returns ``(model, input_range)``; ``ALL_BUILDERS`` maps a
name to a builder. Weights are random but scaled so activations stay O(1).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, seed, input_shape, opset=13, batch="N"):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.input_shape = tuple(input_shape)
        self.opset = opset
        self.batch = batch
        self.k = 0

    def name(self, prefix):
        self.k += 1
        return f"{prefix}{self.k}"

    def const(self, arr, prefix="c"):
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(self, op, inputs, n_out=1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name("n_" + op), **attrs))
        return outs[0]

    def weight(self, *shape, fan_in=None):
        fan_in = fan_in or int(np.prod(shape[1:]))
        return (self.rng.normal(0, 1.0 / np.sqrt(fan_in), shape)).astype(np.float32)

    def gemm(self, x, n_in, n_out, trans_b=True, alpha=1.0, beta=1.0):
        w = self.weight(n_out, n_in)
        return self.node("Gemm", [x, self.const(w if trans_b else w.T), self.const(self.weight(n_out, fan_in=4) * 0.3)],
                         transB=int(trans_b), alpha=alpha, beta=beta)

    def matmul_add(self, x, n_in, n_out):
        y = self.node("MatMul", [x, self.const(self.weight(n_in, n_out, fan_in=n_in))])
        return self.node("Add", [y, self.const(self.weight(n_out, fan_in=4) * 0.3)])

    def conv(self, x, c_in, c_out, k=3, stride=1, pads=(1, 1, 1, 1), dilation=1, group=1):
        w = self.weight(c_out, c_in // group, k, k)
        b = self.weight(c_out, fan_in=4) * 0.3
        return self.node("Conv", [x, self.const(w), self.const(b)], kernel_shape=[k, k], strides=[stride, stride],
                         pads=list(pads), dilations=[dilation, dilation], group=group)

    def bn(self, x, c):
        r = self.rng
        return self.node("BatchNormalization", [x, self.const(r.uniform(0.5, 1.5, c).astype(np.float32)),
                                                 self.const(r.normal(0, 0.2, c).astype(np.float32)),
                                                 self.const(r.normal(0, 0.2, c).astype(np.float32)),
                                                 self.const(r.uniform(0.5, 1.5, c).astype(np.float32))], epsilon=1e-5)

    def flatten(self, x):
        return self.node("Flatten", [x], axis=1)

    def model(self, out, out_dims):
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [self.batch, *self.input_shape])
        outp = helper.make_tensor_value_info(out, TensorProto.FLOAT, [self.batch, *out_dims])
        g = helper.make_graph(self.nodes, "net", [inp], [outp], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=8)
        onnx.checker.check_model(m)
        return m


def mlp(seed=0, acts=("Relu", "Relu")):
    b = Builder(seed, (1, 4, 4))
    x = b.node("Sub", ["input", b.const(np.float32(0.25))])
    x = b.node("Div", [x, b.const(np.float32(0.5))])
    x = b.flatten(x)
    x = b.gemm(x, 16, 12, trans_b=True, alpha=0.9, beta=1.1)
    x = b.node(acts[0], [x])
    x = b.matmul_add(x, 12, 10)
    x = b.node(acts[1], [x]) if acts[1] != "LeakyRelu" else b.node("LeakyRelu", [x], alpha=0.1)
    x = b.node("Dropout", [x])
    x = b.gemm(x, 10, 5, trans_b=False)
    return b.model(x, [5]), (0.0, 1.0)


def mlp_sigmoid(seed=0):
    return mlp(seed, ("Sigmoid", "Tanh"))


def mlp_leaky(seed=0):
    return mlp(seed, ("Relu", "LeakyRelu"))


def convnet(seed=0):
    """Conv (pads/strides/dilation/groups) + BN + MaxPool(ceil) + AvgPool + Pad + Gemm."""
    b = Builder(seed, (2, 9, 9), opset=11)
    x = b.node("Mul", ["input", b.const(np.array([1.5, 0.8], np.float32).reshape(1, 2, 1, 1))])
    x = b.conv(x, 2, 4, k=3, stride=1, pads=(1, 0, 2, 1))
    x = b.bn(x, 4)
    x = b.node("Relu", [x])
    x = b.conv(x, 4, 4, k=2, stride=2, pads=(0, 1, 1, 0), dilation=1, group=2)
    x = b.node("LeakyRelu", [x], alpha=0.05)
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1], ceil_mode=0)
    x = b.node("Pad", [x, b.const(np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64))], mode="constant")
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1], count_include_pad=0, ceil_mode=1)
    x = b.conv(x, 4, 3, k=2, stride=1, pads=(0, 0, 0, 0), dilation=1)
    x = b.node("Tanh", [x])
    x = b.flatten(x)
    model = _finish_dense(b, x)
    return model, (0.0, 1.0)


def _finish_dense(b, x):
    from onnxverify.onnx.importer import import_model

    probe = b.model(x, ["?"])
    n = int(np.prod(import_model(probe, fuse=False).output_shape))
    b.nodes = b.nodes  # keep
    y = b.gemm(x, n, 6)
    return b.model(y, [6])


def resnet(seed=0):
    """Residual Add between computed tensors, Concat, BN without fusion target, dilated conv."""
    b = Builder(seed, (3, 8, 8))
    x = b.conv("input", 3, 4, k=3, stride=1)
    x = b.node("Relu", [x])
    y = b.conv(x, 4, 4, k=3, stride=1, pads=(2, 2, 2, 2), dilation=2)
    y = b.bn(y, 4)
    y = b.node("Relu", [y])
    z = b.node("Add", [x, y])
    w = b.conv(z, 4, 2, k=1, pads=(0, 0, 0, 0))
    w = b.node("Sigmoid", [w])
    cat = b.node("Concat", [z, w], axis=1)
    shifted = b.node("Sub", [b.node("Mul", [cat, b.const(np.float32(2.0))]), b.const(np.float32(1.0))])
    s = b.node("Sub", [cat, b.node("Relu", [shifted])])  # Sub of two computed tensors
    x = b.flatten(s)
    return _finish_dense(b, x), (-1.0, 1.0)


def nhwc_shape_chain(seed=0):
    """NHWC input + Transpose, Reshape from Shape/Gather/Unsqueeze/Concat arithmetic,
    Squeeze/Unsqueeze, Identity, Constant node, dynamic batch dim."""
    b = Builder(seed, (6, 6, 2), opset=13, batch="unk__17")
    x = b.node("Transpose", ["input"], perm=[0, 3, 1, 2])
    x = b.conv(x, 2, 3, k=3, stride=2, pads=(1, 1, 1, 1))
    x = b.node("Relu", [x])
    x = b.node("Identity", [x])
    shape = b.node("Shape", [x])
    bdim = b.node("Gather", [shape, b.const(np.array(0, np.int64))], axis=0)
    bdim = b.node("Unsqueeze", [bdim, b.const(np.array([0], np.int64))])
    minus1 = b.name("const")
    b.nodes.append(helper.make_node("Constant", [], [minus1], value=numpy_helper.from_array(np.array([-1], np.int64))))
    target = b.node("Concat", [bdim, minus1], axis=0)
    x = b.node("Reshape", [x, target])
    x = b.node("Unsqueeze", [x, b.const(np.array([2], np.int64))])
    x = b.node("Squeeze", [x, b.const(np.array([2], np.int64))])
    x = b.matmul_add(x, 27, 8)
    x = b.node("Relu", [x])
    x = b.matmul_add(x, 8, 4)
    return b.model(x, [4]), (0.0, 1.0)


def opset_net(opset: int, seed: int = 0):
    """Conv/BN/Pad/MaxPool/Squeeze/Unsqueeze/Gemm written in the form of ``opset`` (8..21)."""
    b = Builder(seed, (2, 6, 6), opset=opset)
    x = b.conv("input", 2, 3, k=3, stride=1, pads=(1, 1, 1, 1))
    r = b.rng
    bn_in = [x] + [b.const(v.astype(np.float32)) for v in (r.uniform(0.5, 1.5, 3), r.normal(0, 0.2, 3),
                                                           r.normal(0, 0.2, 3), r.uniform(0.5, 1.5, 3))]
    x = b.node("BatchNormalization", bn_in, **({"spatial": 1} if opset < 9 else {}))
    x = b.node("Relu", [x])
    if opset < 11:
        x = b.node("Pad", [x], pads=[0, 0, 1, 1, 0, 0, 0, 0], mode="constant", value=0.0)
    else:
        x = b.node("Pad", [x, b.const(np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64))], mode="constant")
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    if opset < 13:
        x = b.node("Unsqueeze", [x], axes=[2])
        x = b.node("Squeeze", [x], axes=[2])
    else:
        x = b.node("Unsqueeze", [x, b.const(np.array([2], np.int64))])
        x = b.node("Squeeze", [x, b.const(np.array([2], np.int64))])
    x = b.node("Dropout", [x], **({"ratio": 0.5} if opset < 12 else {}))
    x = b.flatten(x)
    x = b.gemm(x, 3 * 3 * 3, 4)
    return b.model(x, [4])


ALL_BUILDERS = {
    "mlp_relu": mlp,
    "mlp_sigmoid_tanh": mlp_sigmoid,
    "mlp_leaky": mlp_leaky,
    "convnet": convnet,
    "resnet": resnet,
    "nhwc_shape_chain": nhwc_shape_chain,
}


def sample_box(rng, lower, upper, n):
    """``n`` points in the box incl. random corners: ``(n, *lower.shape)``."""
    u = rng.uniform(size=(n,) + lower.shape)
    corners = rng.integers(0, 2, size=(n // 2,) + lower.shape).astype(float)
    u[: n // 2] = corners
    return lower + u * (upper - lower)


def sample_lp_ball(rng, x0, eps, p, n):
    """Points in the l_p ball (p in {1, 2}) incl. its extreme points: ``(n, *x0.shape)``."""
    d = x0.size
    if p == 2:
        v = rng.normal(size=(n, d))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        radius = np.where(np.arange(n) < n // 2, 1.0, rng.uniform(size=n) ** (1.0 / d))
        v *= radius[:, None]
    else:
        v = np.zeros((n, d))
        k = min(n // 2, 2 * d)
        idx = rng.integers(0, d, k)
        v[np.arange(k), idx] = rng.choice([-1.0, 1.0], k)
        rest = rng.exponential(size=(n - k, d)) * rng.choice([-1.0, 1.0], (n - k, d))
        rest /= np.abs(rest).sum(1, keepdims=True)
        v[k:] = rest * rng.uniform(size=(n - k, 1))
    return x0[None] + eps * v.reshape((n,) + x0.shape)


# ---- structure ops and model shapes (tests/test_ops_structure.py) ---------------------------------------
def _graph_model(b, inputs, outputs, opset=None):
    """A model with several inputs/outputs: ``inputs``/``outputs`` are ``(name, dims)``."""
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(d)) for n, d in inputs]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(d) if d is not None else None) for n, d in outputs]
    g = helper.make_graph(b.nodes, "net", ins, outs, b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset or b.opset)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def structure_net(seed=0):
    """Conv + Relu, then Slice (steps, negative indices), Split, Gather, GatherElements, Tile,
    Expand, Where (constant condition), ReduceMean / ReduceMax / ReduceSum, Concat, Gemm.
    Batch fixed at 1: GatherElements' constant indices have one sample (onnxruntime would
    gather from the first sample only on a larger batch)."""
    b = Builder(seed, (2, 6, 6), opset=13, batch=1)
    r = b.rng
    x = b.conv("input", 2, 3, k=3, stride=1, pads=(1, 1, 1, 1))
    x = b.node("Relu", [x])  # (3, 6, 6)
    i64 = lambda v: b.const(np.array(v, np.int64))  # noqa: E731
    s = b.node("Slice", [x, i64([0, -1]), i64([6, -7]), i64([2, 3]), i64([2, -2])])  # (3, 3, 3)
    b.node("Split", [s, i64([1, 2])], n_out=2, axis=1)
    s1, s2 = b.nodes[-1].output  # (1, 3, 3), (2, 3, 3)
    g = b.node("Gather", [s2, i64([2, 0, 2])], axis=3)  # (2, 3, 3)
    ge = b.node("GatherElements", [s1, b.const(r.integers(0, 3, (1, 1, 1, 3)).astype(np.int64))], axis=2)  # (1, 1, 3)
    t = b.node("Tile", [ge, i64([1, 2, 3, 1])])  # (2, 3, 3)
    e = b.node("Expand", [b.node("ReduceMax", [g], axes=[2], keepdims=1), i64([1, 2, 3, 3])])  # (2, 3, 3)
    w = b.node("Where", [b.const(r.integers(0, 2, (1, 1, 3, 3)).astype(bool)), t, e])
    m = b.node("ReduceMean", [w], axes=[3], keepdims=0)  # (2, 3)
    mn = b.node("ReduceMin", [g], axes=[3], keepdims=0)  # (2, 3)
    sm = b.node("ReduceSum", [s, i64([1, 2])], keepdims=0)  # (3,)
    cat = b.node("Concat", [b.flatten(m), b.flatten(mn), sm], axis=1)  # (15,)
    y = b.gemm(cat, 15, 4)
    return b.model(y, [4]), (0.0, 1.0)


def convtranspose_net(seed=0):
    """A small generator: Gemm -> Reshape -> ConvTranspose (stride 2, output_padding, pads)
    -> Relu -> Resize (nearest) -> ConvTranspose (group 2, dilation) -> Tanh."""
    b = Builder(seed, (4,), opset=13)
    x = b.gemm("input", 4, 2 * 2 * 2)
    x = b.node("Relu", [x])
    x = b.node("Reshape", [x, b.const(np.array([-1, 2, 2, 2], np.int64))])
    w1 = b.weight(2, 2, 3, 3, fan_in=18)
    x = b.node("ConvTranspose", [x, b.const(w1), b.const(b.weight(2, fan_in=4) * 0.3)], strides=[2, 2],
               pads=[1, 0, 1, 1], output_padding=[1, 0])  # (2, 4, 4)
    x = b.node("Relu", [x])
    x = b.node("Resize", [x, "", b.const(np.array([1, 1, 1.5, 1.0], np.float32))], mode="nearest")  # (2, 6, 4)
    w2 = b.weight(2, 1, 2, 2, fan_in=8)
    x = b.node("ConvTranspose", [x, b.const(w2)], group=2, dilations=[2, 1])  # (2, 8, 5)
    x = b.node("Tanh", [x])
    return b.model(x, ["?", "?", "?"]), (-1.0, 1.0)


def nobatch_mlp(seed=0):
    """Input ``[6]`` with no batch axis: MatMul (vector x matrix), Add, Relu, Sub; output ``[3]``."""
    b = Builder(seed, (6,))
    h = b.matmul_add("x", 6, 8)
    h = b.node("Relu", [h])
    h = b.matmul_add(h, 8, 3)
    y = b.node("Sub", [h, b.const(np.float32(0.1))])
    return _graph_model(b, [("x", (6,))], [(y, (3,))]), (-1.0, 1.0)


def two_input_net(seed=0, two_outputs=False):
    """Inputs ``a [N, 3]`` and ``b [N, 2, 2]`` (X_0..2 are a, X_3..6 are b): two Gemm branches
    added, Relu, then one output ``[N, 3]`` (or two: ``[N, 2]`` and ``[N, 1]``)."""
    bl = Builder(seed, (3,))
    ha = bl.gemm("a", 3, 6)
    hb = bl.gemm(bl.node("Flatten", ["b"], axis=1), 4, 6)
    h = bl.node("Relu", [bl.node("Add", [ha, hb])])
    if two_outputs:
        y1, y2 = bl.gemm(h, 6, 2), bl.gemm(h, 6, 1)
        return _graph_model(bl, [("a", ("N", 3)), ("b", ("N", 2, 2))], [(y1, ("N", 2)), (y2, ("N", 1))]), (-1.0, 1.0)
    y = bl.gemm(h, 6, 3)
    return _graph_model(bl, [("a", ("N", 3)), ("b", ("N", 2, 2))], [(y, ("N", 3))]), (-1.0, 1.0)


def argmax_head(seed=0):
    """``mlp`` followed by ArgMax over the logits (an int64 index output ``[N]``)."""
    model, rng = mlp(seed)
    out = model.graph.output[0].name
    model.graph.node.append(helper.make_node("ArgMax", [out], ["label"], name="argmax", axis=1, keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    onnx.checker.check_model(model)
    return model, rng


STRUCT_BUILDERS = {
    "structure": structure_net,
    "convtranspose": convtranspose_net,
    "nobatch": nobatch_mlp,
    "two_inputs": two_input_net,
    "two_outputs": lambda seed=0: two_input_net(seed, True),
}
