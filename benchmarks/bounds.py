"""Bound-method benchmark: time, peak memory and tightness per method (issue 6).

Builds seeded networks as ONNX (MLP 784-1024-1024-1024-10, a small MNIST conv net with
BatchNorm, CIFAR "cnn4", DM-large on CIFAR), with *raw* weights (torch's default uniform
init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))) and *rescaled* weights (He-normal, std
sqrt(2/fan_in): pre-activations stay O(1) through depth, closer to a trained net). For each
eps and the margin spec of the predicted class it runs every method in a fresh process
(one untimed IBP warm-up, then the median of 3 runs; peak RSS of that process) and prints a table; ``--json``
writes the rows. Also runs on the networks of ../shared/benchmarks with ``--vnncomp``.

    python benchmarks/bounds.py                       # all models, all methods
    python benchmarks/bounds.py --models cnn4 --methods ibp,crown-ibp,crown
    python benchmarks/bounds.py --vnncomp --eps 0.002
    python benchmarks/bounds.py --against ../main-before   # A/B against another checkout, same run

``--against DIR`` measures every row also with the onnxverify of another checkout (e.g.
``git worktree add ../before HEAD~1``), alternating the two in one run, and adds the time
ratio (this tree / the other) and whether the widths agree.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

METHODS = ["ibp", "crown-ibp", "lbp", "crown-lbp", "crown"]


# ---- model builders -----------------------------------------------------------------------------
class _B:
    def __init__(self, seed, scale):
        self.rng, self.scale = np.random.default_rng(seed), scale
        self.nodes, self.inits, self.k = [], [], 0

    def _w(self, shape, fan_in):
        if self.scale == "raw":
            b = 1 / np.sqrt(fan_in)
            return self.rng.uniform(-b, b, shape).astype(np.float32)
        return self.rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)

    def _c(self, arr):
        self.k += 1
        name = f"p{self.k}"
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def _n(self, op, ins, **kw):
        self.k += 1
        out = f"t{self.k}"
        self.nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    def conv(self, x, cin, cout, k, s, p):
        w = self._w((cout, cin, k, k), cin * k * k)
        b = self._w((cout,), cin * k * k) * 0.1
        return self._n("Conv", [x, self._c(w), self._c(b)], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)

    def bn(self, x, c):
        r = self.rng
        return self._n("BatchNormalization", [x, self._c(r.uniform(0.5, 1.5, c).astype(np.float32)),
                                               self._c(r.normal(0, 0.1, c).astype(np.float32)),
                                               self._c(r.normal(0, 0.1, c).astype(np.float32)),
                                               self._c(r.uniform(0.5, 1.5, c).astype(np.float32))])

    def fc(self, x, nin, nout):
        return self._n("Gemm", [x, self._c(self._w((nout, nin), nin)), self._c(self._w((nout,), nin) * 0.1)], transB=1)

    def relu(self, x):
        return self._n("Relu", [x])

    def flat(self, x):
        return self._n("Flatten", [x], axis=1)

    def model(self, out, in_shape, n_out=10):
        g = helper.make_graph(self.nodes, "bench", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", n_out])], self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def mlp(scale):
    b = _B(0, scale)
    x = b.flat("input")
    for nin, nout in [(784, 1024), (1024, 1024), (1024, 1024)]:
        x = b.relu(b.fc(x, nin, nout))
    return b.model(b.fc(x, 1024, 10), (1, 28, 28)), (1, 28, 28)


def mnist_conv_bn(scale):
    b = _B(1, scale)
    x = b.relu(b.bn(b.conv("input", 1, 16, 4, 2, 1), 16))
    x = b.relu(b.bn(b.conv(x, 16, 32, 4, 2, 1), 32))
    x = b.relu(b.fc(b.flat(x), 32 * 7 * 7, 100))
    return b.model(b.fc(x, 100, 10), (1, 28, 28)), (1, 28, 28)


def cnn4(scale):
    b = _B(2, scale)
    x = b.relu(b.conv("input", 3, 32, 3, 1, 1))
    x = b.relu(b.conv(x, 32, 32, 4, 2, 1))
    x = b.relu(b.conv(x, 32, 64, 3, 1, 1))
    x = b.relu(b.conv(x, 64, 64, 4, 2, 1))
    x = b.relu(b.fc(b.flat(x), 4096, 512))
    x = b.relu(b.fc(x, 512, 512))
    return b.model(b.fc(x, 512, 10), (3, 32, 32)), (3, 32, 32)


def dm_large(scale):
    b = _B(3, scale)
    x = b.relu(b.conv("input", 3, 64, 3, 1, 1))
    x = b.relu(b.conv(x, 64, 64, 3, 1, 1))
    x = b.relu(b.conv(x, 64, 128, 3, 2, 1))
    x = b.relu(b.conv(x, 128, 128, 3, 1, 1))
    x = b.relu(b.conv(x, 128, 128, 3, 1, 1))
    x = b.relu(b.fc(b.flat(x), 128 * 16 * 16, 512))
    return b.model(b.fc(x, 512, 10), (3, 32, 32)), (3, 32, 32)


MODELS = {"mlp": (mlp, [1 / 255, 8 / 255, 0.02]), "mnist_conv_bn": (mnist_conv_bn, [1 / 255, 8 / 255, 0.02]),
          "cnn4": (cnn4, [1 / 255, 8 / 255]), "dm_large": (dm_large, [1 / 255, 8 / 255])}


# ---- one measurement in a fresh process ------------------------------------------------------------
def _measure(path, x0, eps, method, strategy, repeats, queue, tree=None):
    if tree is not None:  # the onnxverify of another checkout
        sys.path.insert(0, tree)
    import onnxverify as ov

    try:
        net = ov.load(path)
        label = int(net.forward(x0).argmax())
        spec = ov.margin_spec([label], net.n_outputs)
        iset = ov.LinfBall(x0, eps, clip=(0.0, 1.0))
        net.bounds(iset, method="ibp", spec=spec)  # warm-up (torch kernels' thread pool), not timed
        times, b = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            b = net.bounds(iset, method=method, strategy=strategy, spec=spec)
            times.append(time.perf_counter() - t0)
        lo, hi = np.asarray(b.lower), np.asarray(b.upper)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KB -> GB
        queue.put({"time_s": statistics.median(times), "peak_rss_gb": rss, "mean_width": float((hi - lo).mean()),
                   "mean_margin_lb": float(lo.mean()), "verified": bool((lo > 0).all())})
    except Exception as e:  # reported as a row, not a crash
        queue.put({"error": f"{type(e).__name__}: {str(e)[:120]}"})


def measure(path, x0, eps, method, strategy="adaptive", repeats=3, timeout=900, tree=None):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(str(path), x0, eps, method, strategy, repeats, q, tree))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return {"error": f"timeout after {timeout} s"}
    return q.get() if not q.empty() else {"error": f"worker died (exit code {p.exitcode})"}


def fmt_row(r):
    if "error" in r:
        return [r["model"], r["weights"], f"{r['eps']:.4g}", r["method"], "-", "-", "-", "-", r["error"][:60]] + \
            (["-", "-"] if "against" in r else [])
    row = [r["model"], r["weights"], f"{r['eps']:.4g}", r["method"], f"{r['time_s']:.3f}", f"{r['peak_rss_gb']:.2f}",
           f"{r['mean_width']:.4g}", f"{r['mean_margin_lb']:.4g}", "yes" if r["verified"] else "no"]
    if "against" in r:
        o = r["against"]
        if "error" in o:
            row += ["-", o["error"][:30]]
        else:
            same = abs(o["mean_width"] - r["mean_width"]) <= 1e-4 * (1 + abs(o["mean_width"]))
            row += [f"{r['time_s'] / max(o['time_s'], 1e-9):.2f}x", "same" if same else f"{o['mean_width']:.4g}"]
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--weights", default="raw,rescaled")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--strategy", default="adaptive")
    ap.add_argument("--eps", type=float, default=None, help="one eps instead of each model's list")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900, help="per measurement (s)")
    ap.add_argument("--vnncomp", action="store_true", help="also the networks of ../shared/benchmarks")
    ap.add_argument("--json", default="benchmarks/results/bounds.json")
    ap.add_argument("--against", default=None, help="another checkout: measure it too, alternating, and add ratios")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from onnxverify.report import format_table

    rows = []
    headers = ["model", "weights", "eps", "method", "median s", "peak RSS GB", "mean width", "mean margin lb", "verified"]
    other = str(Path(args.against).resolve()) if args.against else None
    if other:
        headers += ["time vs other", "other's width"]
    tmp = Path(tempfile.mkdtemp(prefix="ov_bench_"))
    jobs = []
    for name in args.models.split(","):
        build, eps_list = MODELS[name]
        for weights in args.weights.split(","):
            model, shape = build(weights)
            path = tmp / f"{name}_{weights}.onnx"
            onnx.save(model, path)
            x0 = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
            for eps in ([args.eps] if args.eps else eps_list):
                jobs.append((name, weights, path, x0, eps))
    if args.vnncomp:
        bench = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
        for path in sorted(bench.glob("*/onnx/*.onnx")):
            if "acasxu" in path.name and not path.name.endswith("1_1_batch_2000.onnx"):
                continue
            import onnxverify as ov

            shape = ov.load(path).input_shape
            x0 = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
            jobs.append((path.stem[:28], "vnncomp", path, x0, args.eps or 0.002))
    for name, weights, path, x0, eps in jobs:
        for method in args.methods.split(","):
            if other:  # the other checkout first, then this one: neither always runs on a warmer machine
                o = measure(path, x0, eps, method, args.strategy, args.repeats, args.timeout, tree=other)
            r = measure(path, x0, eps, method, args.strategy, args.repeats, args.timeout)
            r.update(model=name, weights=weights, eps=eps, method=method)
            if other:
                r["against"] = o
            rows.append(r)
            print("  ".join(fmt_row(r)), flush=True)
    print()
    print(format_table(headers, [fmt_row(r) for r in rows]))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
