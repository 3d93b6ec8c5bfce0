"""Certified-training benchmark: ReLU vs LeakyReLU(0.01->0) vs ParamRamp(0.01->0), vanilla vs the
fast recipe, on scikit-learn's digits (and MNIST when ../shared/data/mnist exists).

Every run uses the same seed, model (DM-small), short IBP schedule and budget; the trained
model is exported to ONNX and *that file* is evaluated (clean and PGD error via onnxruntime /
onnx2torch, IBP and CROWN-LBP (tight) verified error via onnxverify).  "fast" = IBP
initialisation + BatchNorm after every layer but the last + the warm-up regularisers
(lambda 0.5, tau 0.5) + gradient clipping at 10.

    python benchmarks/training.py                   # digits (+ MNIST subset if present)
    python benchmarks/training.py --datasets digits --epochs 10 --pgd-steps 20   # quicker
    python benchmarks/training.py --json results.json
    python benchmarks/training.py --paper --help    # paper-scale runs (benchmarks/training_paper.py)

Prints one table per data set and the time-per-epoch ratio ParamRamp / ReLU.  Errors are %.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MNIST_DIR = HERE.parents[1] / "shared" / "data" / "mnist"

ACTIVATIONS = ("relu", "leaky", "paramramp")
LABEL = {"relu": "ReLU", "leaky": "LeakyReLU(0.01->0)", "paramramp": "ParamRamp(0.01->0)"}


def settings(dataset: str, args) -> dict:
    """The short IBP schedule per data set (same for every run of that data set)."""
    if dataset == "digits":
        s = dict(data="digits", eps_train=0.1, epochs=30, eps_start=1, eps_ramp=15, lr=1e-3, lr_milestones=(25,),
                 lr_gamma=0.2, batch_size=64, n_train=None, n_test=None, pgd_steps=200, pgd_restarts=10,
                 crown_n=None)
    else:  # CROWN-LBP costs ~2 s per MNIST image on one CPU core: it runs on a subset
        s = dict(data=f"mnist:{args.mnist_dir}", eps_train=args.mnist_eps, epochs=10, eps_start=1, eps_ramp=5,
                 lr=1e-3, lr_milestones=(8,), lr_gamma=0.2, batch_size=100, n_train=args.mnist_train,
                 n_test=args.mnist_test, pgd_steps=100, pgd_restarts=2, crown_n=args.mnist_crown)
    if args.pgd_steps is not None:
        s["pgd_steps"] = args.pgd_steps
    if args.pgd_restarts is not None:
        s["pgd_restarts"] = args.pgd_restarts
    if args.epochs:
        scale = args.epochs / s["epochs"]
        s.update(epochs=args.epochs, eps_ramp=max(1, round(s["eps_ramp"] * scale)),
                 lr_milestones=(max(1, round(s["lr_milestones"][0] * scale)),))
    return s


def run_one(dataset: str, recipe: str, activation: str, args, workdir: Path) -> dict:
    from onnxverify.training.config import make_config
    from onnxverify.training.models import build_model
    from onnxverify.training.trainer import prepare_dataset, train

    s = settings(dataset, args)
    fast = recipe == "fast"
    cfg = make_config(
        "digits-quick", data=s["data"], eps_train=s["eps_train"], epochs=s["epochs"], eps_start=s["eps_start"],
        eps_ramp=s["eps_ramp"], eps_kind="smoothed", lr=s["lr"], lr_milestones=s["lr_milestones"],
        lr_gamma=s["lr_gamma"], batch_size=s["batch_size"], kappa_end=0.0, method="ibp", eta_start=0.01, eta_end=0.0,
        reg_lambda=0.5 if fast else 0.0, grad_clip=10.0 if fast else None, n_train=s["n_train"], n_test=s["n_test"],
        seed=args.seed, threads=args.threads, progress=False, eval_samples=0, pgd_steps=s["pgd_steps"],
        pgd_restarts=s["pgd_restarts"], eval_batch_size=args.eval_batch_size,
        verify_methods=("ibp", "crown-lbp") if s["crown_n"] is None else ("ibp",))
    ds = prepare_dataset(cfg)
    model = build_model("dm-small", activation, batchnorm=fast, init="ibp" if fast else "default",
                        input_shape=ds.input_shape, num_classes=ds.num_classes, eta=0.01, seed=args.seed)
    out = workdir / f"{dataset}-{recipe}-{activation}.onnx"
    t0 = time.perf_counter()
    res = train(model, cfg, output=out, dataset=ds, echo=(print if args.verbose else None))
    ev = next(iter(res.evaluation.values()))
    crown, crown_n, ibp_sub = ev["verified_err"].get("crown-lbp"), ev["n"], None
    if s["crown_n"] is not None:
        from onnxverify.training.evaluate import evaluate_onnx

        sub = evaluate_onnx(out, ds, s["eps_train"], methods=("ibp", "crown-lbp"), pgd=False, n_test=s["crown_n"],
                            batch_size=10, seed=args.seed)
        crown, crown_n, ibp_sub = sub["verified_err"]["crown-lbp"], sub["n"], sub["verified_err"]["ibp"]
    times = np.array([h["time_s"] for h in res.history])
    certified = np.array([h["eps"] > 0 for h in res.history])
    return {
        "dataset": dataset, "recipe": recipe, "activation": activation, "eps": s["eps_train"],
        "epochs": s["epochs"], "n_train": int(ds.x_train.shape[0]), "n_test": ev["n"],
        "clean": ev["clean_err"], "pgd": ev["pgd_err"], "ibp": ev["verified_err"].get("ibp"),
        "crown_lbp": crown, "crown_lbp_n": crown_n, "ibp_on_crown_subset": ibp_sub,
        "pgd_steps": s["pgd_steps"], "pgd_restarts": s["pgd_restarts"],
        "s_per_epoch": float(times.mean()), "s_per_certified_epoch": float(times[certified].mean()) if certified.any() else None,
        "total_s": time.perf_counter() - t0, "eval_s": ev["time_s"],
    }


def step_time_ratio(dataset: str, args, repeats: int = 30) -> dict:
    """Median time of one IBP training step (forward, bounds, backward, Adam) per activation,
    measured interleaved on the same batch so that machine load hits every activation alike."""
    import torch

    from onnxverify.training.config import make_config
    from onnxverify.training.losses import certified_loss
    from onnxverify.training.models import build_model
    from onnxverify.training.tied import TrainableNetwork
    from onnxverify.training.trainer import prepare_dataset

    s = settings(dataset, args)
    torch.set_num_threads(args.threads)
    ds = prepare_dataset(make_config("digits-quick", data=s["data"], n_train=s["batch_size"], n_test=1))
    x = torch.from_numpy(ds.normalize(ds.x_train[: s["batch_size"]]))
    y = torch.from_numpy(ds.y_train[: s["batch_size"]])
    lo, hi = (torch.from_numpy(a) for a in ds.input_box(x.numpy(), s["eps_train"]))
    nets = {}
    for act in ACTIVATIONS:
        net = TrainableNetwork(build_model("dm-small", act, input_shape=ds.input_shape, num_classes=ds.num_classes))
        nets[act] = (net, torch.optim.Adam(net.parameters(), 1e-4))
    times = {a: [] for a in ACTIVATIONS}
    for rep in range(repeats + 3):
        for act, (net, opt) in nets.items():
            t0 = time.perf_counter()
            terms = certified_loss(net.train(), x, y, lo, hi, eps=s["eps_train"], kappa=0.5)
            opt.zero_grad()
            terms.loss.backward()
            opt.step()
            if rep >= 3:  # warm-up
                times[act].append(time.perf_counter() - t0)
    med = {a: float(np.median(v)) for a, v in times.items()}
    return {"dataset": dataset, "batch": int(x.shape[0]), "median_step_s": med,
            "paramramp_over_relu": med["paramramp"] / med["relu"], "leaky_over_relu": med["leaky"] / med["relu"]}


def pct(v):
    return "n/a" if v is None else f"{100 * v:6.2f}"


def print_table(rows, dataset):
    rows = [r for r in rows if r["dataset"] == dataset]
    if not rows:
        return
    r0 = rows[0]
    print(f"\n## {dataset}: DM-small, IBP-trained at eps {r0['eps']:g}, {r0['epochs']} epochs, "
          f"{r0['n_train']} train / {r0['n_test']} test images; errors in %, tested at eps {r0['eps']:g}; "
          f"PGD {r0['pgd_steps']} steps x {r0['pgd_restarts']} restarts")
    if r0["crown_lbp_n"] != r0["n_test"]:
        print(f"(CROWN-LBP on a random subset of {r0['crown_lbp_n']} test images; IBP on that subset in brackets)")
    head = f"{'recipe':<8} {'activation':<20} {'clean':>7} {'PGD':>7} {'IBP':>7} {'CROWN-LBP':>15} {'s/epoch':>8} {'s/ep(eps>0)':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        crown = pct(r["crown_lbp"]) if r["ibp_on_crown_subset"] is None else (
            f"{pct(r['crown_lbp']).strip()} [{pct(r['ibp_on_crown_subset']).strip()}]")
        print(f"{r['recipe']:<8} {LABEL[r['activation']]:<20} {pct(r['clean']):>7} {pct(r['pgd']):>7} "
              f"{pct(r['ibp']):>7} {crown:>15} {r['s_per_epoch']:8.2f} "
              f"{(r['s_per_certified_epoch'] or float('nan')):11.2f}")
    for recipe in ("vanilla", "fast"):
        by = {r["activation"]: r for r in rows if r["recipe"] == recipe}
        if "relu" in by and "paramramp" in by:
            a, b = by["paramramp"], by["relu"]
            ratio = a["s_per_epoch"] / b["s_per_epoch"]
            ratio_c = (a["s_per_certified_epoch"] / b["s_per_certified_epoch"]
                       if a["s_per_certified_epoch"] and b["s_per_certified_epoch"] else float("nan"))
            print(f"time per epoch ParamRamp/ReLU ({recipe}): {ratio:.2f} (all epochs), {ratio_c:.2f} (eps > 0 epochs)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--paper" in argv:  # paper-scale runs: benchmarks/training_paper.py
        sys.path.insert(0, str(HERE))
        from training_paper import main as paper_main

        return paper_main(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=None, help="comma list: digits,mnist (default: digits, + mnist if present)")
    p.add_argument("--mnist-dir", default=str(MNIST_DIR))
    p.add_argument("--mnist-train", type=int, default=6000, help="MNIST training subset")
    p.add_argument("--mnist-test", type=int, default=500, help="MNIST test subset (clean, PGD, IBP)")
    p.add_argument("--mnist-crown", type=int, default=50, help="MNIST test images for CROWN-LBP")
    p.add_argument("--mnist-eps", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=None, help="override the epochs (ramp and milestone scale along)")
    p.add_argument("--recipes", default="vanilla,fast")
    p.add_argument("--activations", default=",".join(ACTIVATIONS))
    p.add_argument("--pgd-steps", type=int, default=None, help="default 200 (digits), 100 (MNIST)")
    p.add_argument("--pgd-restarts", type=int, default=None, help="default 10 (digits), 2 (MNIST)")
    p.add_argument("--eval-batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write all results as JSON")
    p.add_argument("--keep", default=None, help="keep the trained ONNX files in this folder")
    p.add_argument("-v", "--verbose", action="store_true", help="print the per-epoch log")
    args = p.parse_args(argv)

    datasets = args.datasets.split(",") if args.datasets else ["digits"] + (["mnist"] if Path(args.mnist_dir).is_dir() else [])
    if "mnist" in datasets and not Path(args.mnist_dir).is_dir():
        sys.exit(f"MNIST directory {args.mnist_dir} not found")
    import onnxverify.bounds as B

    print(f"onnxverify bound methods: {', '.join(B.METHODS)}; torch threads {args.threads}; {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            for recipe in args.recipes.split(","):
                for act in args.activations.split(","):
                    r = run_one(ds, recipe, act, args, work)
                    rows.append(r)
                    print(f"[{ds} {recipe} {act}] clean {pct(r['clean'])} PGD {pct(r['pgd'])} IBP {pct(r['ibp'])} "
                          f"CROWN-LBP {pct(r['crown_lbp'])}  {r['s_per_epoch']:.2f} s/epoch, {r['total_s']:.0f} s total",
                          flush=True)
    ratios = [step_time_ratio(ds, args) for ds in datasets]
    for ds in datasets:
        print_table(rows, ds)
    print("\nInterleaved step timing (median of 30 IBP training steps, DM-small, same batch):")
    for r in ratios:
        med = r["median_step_s"]
        print(f"  {r['dataset']} batch {r['batch']}: ReLU {1e3 * med['relu']:.1f} ms, LeakyReLU {1e3 * med['leaky']:.1f} ms, "
              f"ParamRamp {1e3 * med['paramramp']:.1f} ms -> ParamRamp/ReLU {r['paramramp_over_relu']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "step_timing": ratios}, indent=2))
        print(f"\nwrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
