"""ParamRamp end to end: torch -> ONNX -> stock onnxruntime -> onnxverify (every method) -> neuron statuses.

    python examples/paramramp_example.py [--out DIR] [--eps 0.005] [--steps 300]

Outputs (the ONNX model, the test image, the status plot) go to ``--out DIR`` (created if
needed); without it, to a new temporary folder whose path is printed. Nothing is written to
the current directory.

1. builds a small conv net with ParamRamp activations in torch and trains it briefly on
   scikit-learn's 8x8 digits (random data if scikit-learn is missing);
2. half way, sets every neuron's bend point ``r`` to its mean activation (the paper's recipe)
   and trains on, ``r`` included;
3. exports it to ONNX (``onnxverify::ParamRamp`` custom op, shipped as a model-local function);
4. runs the file in stock onnxruntime and checks it against torch;
5. verifies the margins of one test image with every method and strategy (onnxverify);
6. prints the neuron statuses per layer and draws them (``status.png``, needs matplotlib).

Needs torch and onnxscript (``pip install onnxverify[train]``).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import onnxverify as ov
from onnxverify.converters.paramramp_torch import ParamRamp, export_onnx
from onnxverify.bounds.status import neuron_status
from onnxverify.report.status import format_status_table, plot_status


def digits():
    """(x (N, 1, 8, 8) in [0, 1], y (N,)), float32 / int64."""
    try:
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images[:, None] / 16.0).astype(np.float32), d.target.astype(np.int64)
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.uniform(0, 1, (512, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 512)


def build(eta: float = 0.01) -> nn.Sequential:
    """conv 8 3x3/2 -> ParamRamp -> FC 32 -> ParamRamp -> FC 10 (r per neuron)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), ParamRamp((8, 4, 4), eta=eta),
        nn.Flatten(), nn.Linear(128, 32), ParamRamp(32, eta=eta), nn.Linear(32, 10),
    )


def train(net, x, y, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (128,))
        loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((net(xt).argmax(1) == yt).float().mean())


@torch.no_grad()
def set_r_to_mean_activation(net, x):
    """r of each ParamRamp := the mean of its input over ``x`` (negatives included), >= 1e-4."""
    ramps = [m for m in net if isinstance(m, ParamRamp)]
    means = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: means.__setitem__(mod, inp[0].mean(0))) for m in ramps]
    net(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    for m in ramps:
        m.r.copy_(means[m].clamp_min(1e-4))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None,
                    help="output folder for the model, input and plot (default: a new temporary folder)")
    ap.add_argument("--eps", type=float, default=0.005, help="l_inf radius (pixels in [0, 1])")
    ap.add_argument("--steps", type=int, default=300, help="training steps")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="paramramp_example_")
    os.makedirs(args.out, exist_ok=True)
    print(f"outputs go to {args.out}")
    model_path = os.path.join(args.out, "paramramp_digits.onnx")

    # 1-2. torch: build, train, r at mean activations, train on
    torch.manual_seed(0)
    x, y = digits()
    net = build()
    with torch.no_grad():  # first half: r far away (the net runs as LeakyReLU)
        for m in net:
            if isinstance(m, ParamRamp):
                m.r.fill_(100.0)
    train(net, x[:1500], y[:1500], args.steps // 2)
    set_r_to_mean_activation(net, x[:1500])  # then r at mean activations, and train on (r too)
    acc = train(net, x[:1500], y[:1500], args.steps - args.steps // 2, seed=1)
    net.eval()
    with torch.no_grad():
        test_acc = float((net(torch.from_numpy(x[1500:])).argmax(1).numpy() == y[1500:]).mean())
    print(f"torch: ParamRamp conv net, train accuracy {acc:.3f}, test accuracy {test_acc:.3f}")

    # 3. export: ParamRamp -> one onnxverify::ParamRamp node each, with its ONNX function attached
    export_onnx(net, torch.from_numpy(x[:1]), model_path, opset=17)
    print(f"exported {model_path}")

    # 4. stock onnxruntime runs it (no custom kernel) and agrees with torch
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    xs = x[1500:1600]
    y_ort = sess.run(None, {sess.get_inputs()[0].name: xs})[0]
    with torch.no_grad():
        y_torch = net(torch.from_numpy(xs)).numpy()
    print(f"onnxruntime vs torch on {len(xs)} test images: max abs diff {np.abs(y_ort - y_torch).max():.2e}")

    # 5. onnxverify: import, check, verify one test image with every method
    vnet = ov.load(model_path)
    print(f"onnxverify: {vnet}, ops {vnet.graph.op_counts()}, forward vs onnxruntime OK: {vnet.check().ok}")
    k = 1500 + int(np.flatnonzero(y_torch.argmax(1) == y[1500:1600])[0])  # a correctly classified test image
    x0, label = x[k], int(y[k])
    np.save(os.path.join(args.out, "x0.npy"), x0[None])
    box = ov.LinfBall(x0, args.eps, clip=(0.0, 1.0))
    C = ov.margin_spec(label, 10)
    print(f"\nmargins y_{label} - y_j over the l_inf ball of radius {args.eps} around test image {k} (label {label}):")
    rows = []
    for method in ("ibp", "lbp", "crown-ibp", "crown-lbp", "crown"):
        for strategy in ((None,) if method == "ibp" else ("tight", "adaptive")):
            b = vnet.bounds(box, method=method, strategy=strategy, spec=C)
            rows.append([method, strategy or "-", f"{b.lower.min():.4f}", f"{(b.upper - b.lower).mean():.4f}",
                         "yes" if (b.lower > 0).all() else "no", f"{b.time_s * 1e3:.1f}"])
    print(_table(["method", "strategy", "min margin lower", "mean width", "verified", "ms"], rows))

    # 6. neuron statuses (the paper's Figures 4 and 6), from IBP's and CROWN's pre-activation bounds
    panels = {}
    for method, strategy in (("ibp", None), ("crown", "tight")):
        sts = neuron_status(vnet, box, method=method, strategy=strategy)
        panels[f"{method}{' / ' + strategy if strategy else ''}"] = sts
        print(f"\nneuron statuses, {method}{' / ' + strategy if strategy else ''}:")
        print(format_status_table(sts))
    try:
        path = plot_status(panels, os.path.join(args.out, "status.png"), title=f"ParamRamp digits net, eps {args.eps}")
        print(f"\nwrote {path}")
    except ImportError as e:
        print(f"\n(no plot: {e})")
    print(f"same from the shell:  onnxverify stats {model_path} --input {os.path.join(args.out, 'x0.npy')} "
          f"--eps {args.eps} --clip 0 1 --method crown --strategy tight --plot {os.path.join(args.out, 'status_cli.png')}")


def _table(headers, rows):
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).rjust(n) for h, n in zip(headers, w)), "  ".join("-" * n for n in w)]
    return "\n".join(lines + ["  ".join(str(c).rjust(n) for c, n in zip(r, w)) for r in rows])


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.1f} s)")
