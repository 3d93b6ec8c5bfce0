"""Random small IR graphs (no ONNX) for the complete-verification tests: dense nets with any
mix of ReLU / LeakyReLU / ParamRamp / Sigmoid / Tanh activations, and their exact values."""
from __future__ import annotations

import numpy as np

from onnxverify.ir import Graph, Node
from onnxverify.ops import evaluate


def dense_net(seed, sizes=(3, 8, 8, 2), acts=("Relu", "Relu"), eta=0.1, scale=1.0):
    """``Input (sizes[0],) -> [Linear -> act] * len(acts) -> Linear``; ``acts`` entries are op
    names (``LeakyRelu`` gets ``alpha = eta``, ``ParamRamp`` gets ``eta`` and random ``r``)."""
    rng = np.random.default_rng(seed)
    nodes = [Node("x", "Input", (), shape=(sizes[0],))]
    prev = "x"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.normal(0, scale / np.sqrt(n_in), (n_out, n_in)).astype(np.float32)
        b = rng.normal(0, 0.3, n_out).astype(np.float32)
        nodes.append(Node(f"z{i}", "Linear", (prev,), {"weight": w, "bias": b}, shape=(n_out,)))
        prev = f"z{i}"
        if i < len(acts):
            op = acts[i]
            params, attrs = {}, {}
            if op == "LeakyRelu":
                attrs = {"alpha": eta}
            elif op == "ParamRamp":
                params, attrs = {"r": rng.uniform(0.2, 1.5, n_out).astype(np.float32)}, {"eta": eta}
            nodes.append(Node(f"a{i}", op, (prev,), params, attrs, shape=(n_out,)))
            prev = f"a{i}"
    return Graph(nodes, prev)


def outputs(graph, xs):
    """Exact outputs ``(n, n_out)`` (float64) at points ``xs (n, *input_shape)``."""
    return np.asarray(evaluate(graph, np.asarray(xs, dtype=np.float64))).reshape(len(xs), -1)


def values(graph, xs):
    """Every node's value at ``xs``: ``{name: (n, *shape)}`` (float64)."""
    return evaluate(graph, np.asarray(xs, dtype=np.float64), keep_all=True)


def box_points(rng, lo, hi, n):
    """``n`` points of the box ``lo, hi (d,)``: half random corners, half uniform."""
    u = rng.uniform(size=(n, lo.size))
    u[: n // 2] = rng.integers(0, 2, size=(n // 2, lo.size))
    return lo + u * (hi - lo)
