"""Bound widths of the nonlinear relaxations (issue 10): per method, on a transformer block
and a trigonometric net, against IBP and against the sampled range.

The networks are the seeded builders of tests/nonlinear_nets.py (shared with the tests):
``transformer`` (LayerNorm-17, one attention head with ``Q K^T`` and ``P V`` products and a
Softmax, residual, decomposed LayerNorm, Gelu MLP, residual, 3 outputs), ``trig`` (``Sin *
Cos`` product, ``Exp``, quotient by ``1 + |W x|``), and, for the two Softmax forms, the same
small net with the Softmax op (imported as ``1 / sum exp(x_j - x_i)``) and with
``exp(z) * (1 / sum exp(z))`` written out (a product), and two index heads after a ReLU MLP
(TopK with both outputs, ArgMax -> OneHot). For each, 4 seeded centres and an
L-inf box; the width is the mean over outputs and centres of ``upper - lower``; the sampled
range (uniform points, corners and PGD points, onnxruntime) is a lower bound of the true
range, so ``width / sampled`` >= 1 and closer to 1 is tighter. Strategy: adaptive (and
tight for the CROWN row). float64. Times are wall seconds of one bound call, indicative
only (the widths are the point; run under ``flock /work/bench.lock`` when times matter).

    python benchmarks/op_widths.py                  # prints the table
    python benchmarks/op_widths.py --json benchmarks/results/op_widths.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import onnxverify as ov  # noqa: E402
from onnxverify.onnx.importer import import_model  # noqa: E402
from onnxverify.onnx.reference import OrtModel  # noqa: E402

import nonlinear_nets as nn_  # noqa: E402
import test_ops_index_heads as heads  # noqa: E402
from test_ops_nonlinear import sampled  # noqa: E402

ROWS = [("ibp", None), ("lbp", "adaptive"), ("crown-ibp", "adaptive"), ("crown-lbp", "adaptive"),
        ("crown", "adaptive"), ("crown", "tight"), ("relaxed-crown-2", "adaptive")]
NETS = {
    "transformer": lambda s: nn_.transformer(s),
    "trig": lambda s: nn_.trig(s),
    "softmax-op": lambda s: nn_.softmax_net(s, "pairwise"),  # imported as 1 / sum_j exp(x_j - x_i)
    "softmax-decomposed": lambda s: nn_.softmax_net(s, "decomposed"),  # exp(z) * (1 / sum exp(z))
    "layernorm-17": lambda s: nn_.layernorm_net(s, form="op17"),
    "layernorm-decomposed": lambda s: nn_.layernorm_net(s, form="decomposed"),
    # index heads after a ReLU MLP (tests/test_ops_index_heads.py): TopK k=3 (3 values, then 3
    # indices) and ArgMax -> OneHot (5 codes in {-1, 2})
    "topk-head": lambda s: (heads.topk_head(s)[0], (0.0, 1.0), 0.02),
    "onehot-head": lambda s: (heads.onehot_head(s)[0], (0.0, 1.0), 0.02),
}


def measure(name, build, centres=4, seed=0):
    model, (lo, hi), eps = build(seed)
    net, ort = ov.Network(import_model(model), model=model), OrtModel(model)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(lo + eps, hi - eps, (centres,) + net.input_shape)
    box = ov.Box(x0 - eps, x0 + eps)
    ys = sampled(net, ort, box, rng, n=400)
    srange = float(np.mean(ys.max(0) - ys.min(0)))
    rows = []
    ibp_w = None
    for method, strategy in ROWS:
        t = time.perf_counter()
        b = net.bounds(box, method=method, strategy=strategy, dtype=np.float64)
        dt = time.perf_counter() - t
        w = float(np.mean(b.upper - b.lower))
        ibp_w = w if method == "ibp" else ibp_w
        rows.append({"net": name, "method": method, "strategy": strategy or "-", "width": w,
                     "vs_ibp": w / ibp_w, "vs_sampled": w / srange, "sampled_range": srange, "seconds": dt,
                     "eps": eps, "centres": centres})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of: " + ", ".join(NETS))
    args = ap.parse_args(argv)
    rows = []
    for name in args.nets.split(","):
        rows += measure(name, NETS[name])
    print(f"{'net':22s} {'method':16s} {'strategy':9s} {'width':>10s} {'vs IBP':>8s} {'vs sampled':>11s} {'s':>6s}")
    for r in rows:
        print(f"{r['net']:22s} {r['method']:16s} {r['strategy']:9s} {r['width']:10.4g} {r['vs_ibp']:8.3f} "
              f"{r['vs_sampled']:11.2f} {r['seconds']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "command": "python benchmarks/op_widths.py --json "
                                               + args.json, "note": "seconds: indicative (shared machine, no lock)"},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
