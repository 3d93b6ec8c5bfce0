"""Regenerate the bundled example (onnxverify/data/): a small MLP trained on scikit-learn's
8x8 digits with plain NumPy, a test image and its label. Run once; the outputs are committed.

    python scripts/make_bundled_example.py
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parents[1] / "onnxverify" / "data"


def train(x, y, sizes=(64, 32, 32, 10), epochs=60, lr=0.1, seed=0):
    rng = np.random.default_rng(seed)
    Ws = [rng.normal(0, np.sqrt(2 / a), (b, a)) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [np.zeros(b) for b in sizes[1:]]
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), len(x) // 32):
            acts = [x[idx]]
            for k, (W, b) in enumerate(zip(Ws, bs)):
                z = acts[-1] @ W.T + b
                acts.append(np.maximum(z, 0) if k < len(Ws) - 1 else z)
            p = np.exp(acts[-1] - acts[-1].max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            g = p
            g[np.arange(len(idx)), y[idx]] -= 1
            g /= len(idx)
            for k in reversed(range(len(Ws))):
                gW, gb = g.T @ acts[k], g.sum(0)
                g = (g @ Ws[k]) * (acts[k] > 0)
                Ws[k] -= lr * gW
                bs[k] -= lr * gb
    return Ws, bs


def main():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float64)
    y = d.target
    Ws, bs = train(x[:1500], y[:1500])
    nodes, inits = [], []
    cur = "input"
    nodes.append(helper.make_node("Flatten", ["input"], ["flat"], axis=1))
    cur = "flat"
    for k, (W, b) in enumerate(zip(Ws, bs)):
        inits += [numpy_helper.from_array(W.astype(np.float32), f"W{k}"), numpy_helper.from_array(b.astype(np.float32), f"b{k}")]
        out = "output" if k == len(Ws) - 1 else f"z{k}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{k}", f"b{k}"], [out], transB=1))
        if k < len(Ws) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"a{k}"]))
            out = f"a{k}"
        cur = out
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="onnxverify", ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / "digits_mlp.onnx")
    test_x, test_y = x[1500:], y[1500:]
    z = test_x
    for k, (W, b) in enumerate(zip(Ws, bs)):
        z = z @ W.T + b
        z = np.maximum(z, 0) if k < len(Ws) - 1 else z
    print("test accuracy", (z.argmax(1) == test_y).mean())
    i = int(np.flatnonzero(z.argmax(1) == test_y)[0])
    np.save(OUT / "digits_x0.npy", test_x[i].reshape(1, 8, 8).astype(np.float32))
    (OUT / "digits_x0_label.txt").write_text(f"{int(test_y[i])}\n")
    print("bundled sample label", int(test_y[i]))


if __name__ == "__main__":
    main()
