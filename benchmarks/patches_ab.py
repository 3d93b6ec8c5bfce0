"""Patches vs the previous passes (NumPy: windowed tiles; torch: dense), CROWN, eps 2/255, one
thread, the two settings interleaved over two rounds; wall and CPU seconds of one call each, and
the mean widths (equal up to float32 rounding).

    flock /work/bench.lock python benchmarks/patches_ab.py MODELS_DIR/cnn4_scaled.onnx MODELS_DIR/cnn4_x.npy \
        --json benchmarks/results/patches_ab_cnn4.json

MODELS_DIR: what ../shared/anchors/build_models.py writes (the models of benchmarks/lirpa_compare.py).
"""
import argparse
import json
import time

import numpy as np

import onnxverify as ov
import onnxverify.bounds.passes as passes
from onnxverify.backend import threads

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("model")
ap.add_argument("input")
ap.add_argument("--json", default=None)
args = ap.parse_args()
threads.configure(1)
import torch  # noqa: E402

torch.set_num_threads(1)
model = args.model
net = ov.load(model)
x = np.load(args.input).astype(np.float32)
iset = ov.LinfBall(x, 2 / 255, clip=(0.0, 1.0))
rows, widths = [], {}
for rnd in range(2):
    for backend in ("numpy", "torch"):
        for patches in (True, False):
            passes.PATCHES = patches
            t, c = time.perf_counter(), time.process_time()
            b = net.bounds(iset, method="crown", backend=backend)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            lo, hi = (np.asarray(v.cpu() if hasattr(v, "cpu") else v, np.float64) for v in (b.lower, b.upper))
            widths[(backend, patches)] = float(np.mean(hi - lo))
            rows.append({"round": rnd, "backend": backend, "patches": patches, "wall": wall, "cpu": cpu})
            print(rows[-1], widths[(backend, patches)], flush=True)
out = {"model": model, "rows": rows, "command": "python benchmarks/patches_ab.py " + " ".join(
    [args.model, args.input]), "widths": {f"{k[0]}-{'patches' if k[1] else 'previous'}": v for k, v in widths.items()}}
print(json.dumps(out, indent=1))
if args.json:
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
