"""Cost of ParamRamp relative to ReLU in the verifier: IBP and CROWN-LBP on the same net.

Two ONNX models with the same weights differ only in their activations: ``Relu`` nodes, or
``onnxverify::ParamRamp`` nodes (eta 0.01, r per neuron at the mean pre-activation over
random inputs, the paper's initialisation). Both are bounded on the margins of a batch of
inputs in one process; each timing is the median of ``--repeats`` runs, ReLU and ParamRamp
interleaved so that machine load hits both alike.

    python benchmarks/paramramp_cost.py                        # MLP and DM-small on 1x28x28, numpy
    python benchmarks/paramramp_cost.py --nets dm-small --batch 4 --repeats 9 --backend torch
    python benchmarks/paramramp_cost.py --json cost.json --threads 4    # BLAS threads (default 1)

Prints one row per (net, method): median ms per batch for each activation, the ratio
ParamRamp / ReLU, and the unstable neurons (all kinds) in each net under that method.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _pin_threads(argv):
    """``--threads N`` (default 1): BLAS/OpenMP threads (and torch's, whose conv2d the numpy
    backend uses), set before numpy loads. One thread gives
    stable timings on a shared machine; the ratio is what this benchmark is about."""
    n = "1"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    if n != "0":  # 0: leave the environment alone
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = n


if __name__ == "__main__":
    _pin_threads(sys.argv[1:])

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import onnxverify as ov  # noqa: E402
from onnxverify.converters import attach_paramramp_function, make_paramramp_node  # noqa: E402
from onnxverify.network import Network  # noqa: E402
from onnxverify.onnx.importer import import_model  # noqa: E402
from onnxverify.bounds.status import neuron_status  # noqa: E402
from onnxverify.ops import evaluate, rule_of  # noqa: E402

ETA = 0.01


# ---- the two nets ----------------------------------------------------------------------------------
def layers(name: str):
    """[(kind, params)] of a net on (1, 28, 28); kind 'conv' (c_out, k, stride, pad) or 'fc' (n_out)."""
    if name == "mlp":
        return (1, 28, 28), [("flatten", None), ("fc", 256), ("fc", 256), ("fc", 10)]
    if name == "dm-small":  # PAPER_NOTES §3
        return (1, 28, 28), [("conv", (16, 4, 2, 2)), ("conv", (32, 4, 1, 2)), ("flatten", None), ("fc", 100),
                             ("fc", 10)]
    raise SystemExit(f"unknown net {name!r}: choose mlp or dm-small")


def build(name: str, seed: int = 0):
    """-> (ReLU model, ParamRamp model) sharing every weight."""
    in_shape, spec = layers(name)
    rng = np.random.default_rng(seed)
    weights, shape = [], in_shape
    for kind, p in spec:  # He-style random weights, small biases
        if kind == "conv":
            c_out, k, s, pad = p
            weights.append((rng.normal(0, np.sqrt(2 / (shape[0] * k * k)), (c_out, shape[0], k, k)),
                            rng.normal(0, 0.05, c_out)))
            hw = (shape[1] + 2 * pad - k) // s + 1
            shape = (c_out, hw, hw)
        elif kind == "fc":
            n_in = int(np.prod(shape))
            weights.append((rng.normal(0, np.sqrt(2 / n_in), (p, n_in)), rng.normal(0, 0.05, p)))
            shape = (p,)
        else:
            weights.append(None)
            shape = (int(np.prod(shape)),)
    relu = _model(in_shape, spec, weights, None)
    # r at the mean pre-activation over random inputs (floored at 1e-4): every status occurs
    g = import_model(relu)
    x = rng.uniform(0, 1, (256,) + in_shape).astype(np.float32)
    vals = evaluate(g, x, keep_all=True)
    pre = [n.inputs[0] for n in g.computed if rule_of(n).statuses is not None]
    rs = [np.maximum(vals[p].mean(axis=0), 1e-4) for p in pre]
    return relu, _model(in_shape, spec, weights, rs)


def _model(in_shape, spec, weights, rs):
    nodes, inits, x = [], [], "input"
    n_act = sum(kind in ("conv", "fc") for kind, _ in spec) - 1

    def const(a, n):
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), n))
        return n

    act = 0
    for i, ((kind, p), w) in enumerate(zip(spec, weights)):
        if kind == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [f"flat{i}"], axis=1))
            x = f"flat{i}"
            continue
        W, b = w
        if kind == "conv":
            c_out, kk, s, pad = p
            nodes.append(helper.make_node("Conv", [x, const(W, f"W{i}"), const(b, f"b{i}")], [f"z{i}"],
                                          kernel_shape=[kk, kk], strides=[s, s], pads=[pad] * 4))
        else:
            nodes.append(helper.make_node("Gemm", [x, const(W, f"W{i}"), const(b, f"b{i}")], [f"z{i}"], transB=1))
        x = f"z{i}"
        if act < n_act:
            if rs is None:
                nodes.append(helper.make_node("Relu", [x], [f"a{i}"]))
            else:
                nodes.append(make_paramramp_node(x, const(rs[act], f"r{i}"), f"a{i}", eta=ETA, name=f"ramp{i}"))
            x, act = f"a{i}", act + 1
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if rs is not None:
        attach_paramramp_function(m)
    onnx.checker.check_model(m, full_check=True)
    return m


# ---- timing --------------------------------------------------------------------------------------------
def median_ms(fns: dict, repeats: int) -> dict:
    """Median wall time (ms) of each zero-argument callable, runs interleaved, after one warm-up each."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def run(args) -> list:
    rows = []
    for name in args.nets:
        relu_m, ramp_m = build(name, args.seed)
        nets = {"relu": Network(import_model(relu_m), None, relu_m),
                "paramramp": Network(import_model(ramp_m), None, ramp_m)}
        x0 = np.random.default_rng(args.seed + 1).uniform(0, 1, (args.batch,) + nets["relu"].input_shape)
        labels = nets["relu"].forward(x0).argmax(axis=1)
        C = ov.margin_spec(labels, 10)
        box = ov.LinfBall(x0, args.eps, clip=(0.0, 1.0))
        for method in args.methods:
            strategy = None if method == "ibp" else args.strategy
            fns = {k: (lambda n=n, m=method, s=strategy: n.bounds(box, m, spec=C, strategy=s, backend=args.backend))
                   for k, n in nets.items()}
            ms = median_ms(fns, args.repeats)
            unstable = {k: sum(s.unstable for s in neuron_status(n, box, method, strategy)) for k, n in nets.items()}
            rows.append({"net": name, "method": method + (f" / {strategy}" if strategy else ""), "batch": args.batch,
                         "relu_ms": ms["relu"], "paramramp_ms": ms["paramramp"],
                         "ratio": ms["paramramp"] / ms["relu"], "relu_unstable": unstable["relu"],
                         "paramramp_unstable": unstable["paramramp"]})
            print(_fmt_row(rows[-1]), flush=True) if args.verbose else None
        rows.append(_lines_row(name, nets, box, args))
    return rows


def _lines_row(name, nets, box, args):
    """The bounding lines alone (tight), on IBP's pre-activation bounds of the first layer:
    what ParamRamp adds per activation layer of a linear method."""
    from onnxverify.backend import get_backend
    from onnxverify.bounds.status import preactivation_bounds

    bk = get_backend(args.backend)
    fns = {}
    for k, n in nets.items():
        act = next(a for a in n.graph.computed if rule_of(a).statuses is not None)  # the first ReLU / ParamRamp
        lo, hi = preactivation_bounds(n.graph, box, "ibp", backend=args.backend)[act.inputs[0]]
        fns[k] = lambda a=act, lo=lo, hi=hi: rule_of(a).lines(bk, a, lo, hi, args.strategy)
    ms = median_ms(fns, max(args.repeats, 25))
    return {"net": name, "method": f"lines only, layer 1 / {args.strategy}", "batch": args.batch,
            "relu_ms": ms["relu"], "paramramp_ms": ms["paramramp"], "ratio": ms["paramramp"] / ms["relu"],
            "relu_unstable": "", "paramramp_unstable": ""}


def _fmt_row(r):
    return [r["net"], r["method"], r["batch"], f"{r['relu_ms']:.2f}", f"{r['paramramp_ms']:.2f}", f"{r['ratio']:.2f}",
            r["relu_unstable"], r["paramramp_unstable"]]


def table(rows) -> str:
    headers = ["net", "method", "batch", "ReLU ms", "ParamRamp ms", "ratio", "unstable ReLU", "unstable PR"]
    cells = [_fmt_row(r) for r in rows]
    w = [max(len(str(h)), *(len(str(c[i])) for c in cells)) for i, h in enumerate(headers)]
    out = ["  ".join(str(h).rjust(n) for h, n in zip(headers, w)), "  ".join("-" * n for n in w)]
    return "\n".join(out + ["  ".join(str(c).rjust(n) for c, n in zip(r, w)) for r in cells])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["mlp", "dm-small"])
    ap.add_argument("--methods", nargs="+", default=["ibp", "crown-lbp"])
    ap.add_argument("--strategy", default="tight",
                    help="bounding lines of the linear methods (the paper's evaluation: tight)")
    ap.add_argument("--batch", type=int, default=8, help="images bounded at once")
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default="1", help="BLAS/OpenMP/torch threads (0: leave them as set)")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.threads != "0":
        try:  # the numpy backend convolves with torch when it is installed
            import torch

            torch.set_num_threads(int(args.threads))
        except ImportError:
            pass
    rows = run(args)
    print(table(rows))
    print(f"median of {args.repeats} runs each (interleaved, after a warm-up), eps {args.eps} (l_inf), margins spec, "
          f"backend {args.backend}, ParamRamp eta {ETA}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, "
          f"numpy {np.__version__}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"rows": rows, "args": vars(args)}, f, indent=1)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
