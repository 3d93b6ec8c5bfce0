"""In-process A/B of session 21's CROWN speedups on a conv net, one thread, settings
interleaved over rounds: the patches at the input concretised window by window
(``InputSet.concretize_patches``) vs the dense rows, and the CPU forms of torch's transposed
convolution (``torch_backend.conv_transpose_form``) vs torch's plain kernel. Prints wall and
CPU seconds of one CROWN call per setting, the seconds of each intermediate node's passes
and the mean width.

    flock /work/bench.lock python benchmarks/conv_speedups_ab.py MODELS_DIR/cnn4_scaled.onnx MODELS_DIR/cnn4_x.npy \\
        --backends numpy,torch --rounds 2 --json out.json
"""
import argparse
import json
import time

import numpy as np

import onnxverify as ov
import onnxverify.backend.torch_backend as tb
import onnxverify.bounds.passes as passes
from onnxverify.backend import threads
from onnxverify.specs.input_sets import Box, InputSet

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("model")
ap.add_argument("input")
ap.add_argument("--backends", default="numpy")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--eps", type=float, default=2 / 255)
ap.add_argument("--json", default=None)
args = ap.parse_args()
threads.configure(1)
import torch  # noqa: E402

torch.set_num_threads(1)
net = ov.load(args.model)
x0 = np.load(args.input).astype(np.float32)[0]
spec = ov.margin_spec([int(net.forward(x0).argmax())], net.n_outputs)
iset = ov.LinfBall(x0, args.eps, clip=(0.0, 1.0))
net.bounds(iset, method="ibp", spec=spec)
window_form, picked = Box.concretize_patches, tb.conv_transpose_form
SETTINGS = {"both": (True, True), "dense-input": (False, True), "plain-kernel": (True, False), "neither": (False, False)}
per_node = {}
original = passes.backward_undecided


def timed(eng, name, *a, **k):
    t = time.process_time()
    out = original(eng, name, *a, **k)
    per_node[name] = round(time.process_time() - t, 3)
    return out


passes.backward_undecided = timed
import onnxverify.bounds.methods as methods  # noqa: E402

if hasattr(methods, "backward_undecided"):
    methods.backward_undecided = timed
rows = []
for rnd in range(args.rounds):
    for backend in args.backends.split(","):
        for setting, (windows, forms) in SETTINGS.items():
            Box.concretize_patches = window_form if windows else InputSet.concretize_patches
            tb.conv_transpose_form = picked if forms else (lambda *a: "plain")
            per_node = {}
            t, c = time.perf_counter(), time.process_time()
            b = net.bounds(iset, method="crown", spec=spec, backend=backend)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            lo, hi = (np.asarray(v.cpu() if hasattr(v, "cpu") else v, np.float64) for v in (b.lower, b.upper))
            rows.append({"round": rnd, "backend": backend, "setting": setting, "wall": round(wall, 2),
                         "cpu": round(cpu, 2), "passes_cpu": dict(per_node), "mean_width": float(np.mean(hi - lo))})
            print(json.dumps(rows[-1]), flush=True)
Box.concretize_patches, tb.conv_transpose_form = window_form, picked
if args.json:
    with open(args.json, "w") as f:
        json.dump({"model": args.model, "eps": args.eps, "rows": rows}, f, indent=1)
