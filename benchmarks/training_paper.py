"""Paper-scale certified training (``python benchmarks/training.py --paper``).

Runs the paper's MNIST schedule (PAPER_NOTES.md §4, preset ``mnist-paper``: train eps 0.4,
batch 256, Adam 5e-4, 200 epochs, lr x0.1 at 130 and 190, eps 0 for epochs 0-9, ramp 10-60)
on the full MNIST (60k / 10k) for each RUN = ``MODEL:METHOD:ACTIVATION`` (e.g.
``dm-small:ibp:relu``, ``dm-small:crown-ibp:paramramp``; ``paramramp`` is ParamRamp 0.01 -> 0),
one run after the other, each in its own folder under ``--root``::

    ROOT/NAME/initial.onnx        the untrained model (built for MNIST)
    ROOT/NAME/train/              config.json, log.jsonl (one line per epoch), checkpoint.pt
    ROOT/NAME/NAME.onnx           the exported model (phase ``eval``)
    ROOT/NAME/NAME.card.json      its model card
    ROOT/NAME/eval.json           clean / PGD / IBP / CROWN-LBP errors of the exported file

Phases: ``train`` (resumable: a run with a checkpoint continues from it, a finished run is
skipped), ``eval`` (export the final checkpoint and evaluate the exported ONNX file on the
test set; ``--crown-n`` limits CROWN-LBP to a random sample when the whole test set is too
slow), ``table`` (print the table of every evaluated run, ``--json`` writes it), ``status``
(progress of unfinished runs: epochs, time per epoch, projected total), ``all``.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/training.py --paper --phase train \\
        --runs dm-small:ibp:relu,dm-small:ibp:paramramp

The default ``--root`` is ``benchmarks/paper_runs/`` in the repository: a run longer than one
working session is committed there (checkpoint, log, config: ~20 MB for DM-small) so that the
next session, on any machine, continues it from its checkpoint with the same command.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
MNIST_DIR = HERE.parents[1] / "shared" / "data" / "mnist"
PAPER_DM_LARGE = {  # PAPER_NOTES.md §5: verified error % at eps 0.4, DM-large
    ("ibp", "relu"): 14.80, ("ibp", "paramramp"): 10.90, ("crown-ibp", "relu"): 12.06, ("crown-ibp", "paramramp"): 10.68}
#: the preset of each training method (MTL-IBP's / SABR's hyper-parameters)
PRESET_OF_METHOD = {"ibp": "mnist-paper", "crown-ibp": "mnist-paper", "mtl-ibp": "mnist-mtl-ibp", "sabr": "mnist-sabr"}
LABEL = {"relu": "ReLU", "leaky": "LeakyReLU(0.01->0)", "paramramp": "ParamRamp(0.01->0)"}


def parse_run(text: str) -> Dict[str, str]:
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise SystemExit(f"run {text!r}: expected MODEL:METHOD:ACTIVATION, e.g. dm-small:ibp:relu")
    model, method, act = parts
    return {"model": model, "method": method, "activation": act}


def run_name(spec: Dict[str, str], args) -> str:
    name = f"{spec['model']}-{spec['method']}-{spec['activation']}"
    if args.epochs != 200:
        name += f"-e{args.epochs}"
    if args.n_train is not None:
        name += f"-n{args.n_train}"
    if args.tag:
        name += f"-{args.tag}"
    return name


def make_run_config(spec: Dict[str, str], args):
    """The ``mnist-paper`` recipe (``mnist-mtl-ibp`` / ``mnist-sabr`` for those methods) on
    ``spec``'s method; ``--epochs`` below 200 scales the schedule (clean epochs, ramp, lr
    milestones) proportionally.  ``--settings`` (JSON) overrides any config field."""
    from onnxverify.training.config import make_config
    from onnxverify.training.schedules import get_preset

    preset = PRESET_OF_METHOD.get(spec["method"], "mnist-paper")
    p = get_preset(preset)
    scale = args.epochs / p.epochs
    over = {}
    if args.epochs != p.epochs:  # the same schedule in fewer epochs (at least one clean epoch)
        over = dict(epochs=args.epochs, eps_start=max(1, round(p.eps_start * scale)),
                    eps_ramp=max(1, round(p.eps_ramp * scale)),
                    lr_milestones=tuple(max(1, min(args.epochs - 1, round(m * scale))) for m in p.lr_milestones))
    settings = dict(data=f"mnist:{args.mnist_dir}", method=spec["method"], n_train=args.n_train, seed=args.seed,
                    threads=args.threads, progress=False, eval_samples=args.eval_samples,
                    eval_pgd_steps=args.eval_pgd_steps, eval_pgd_restarts=1, eval_eps=0.4, **over)
    settings.update(json.loads(args.settings) if args.settings else {})  # --settings wins
    return make_config(preset, **settings)


def _stamp(msg: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S ") + msg, flush=True)


def train_phase(spec: Dict[str, str], args) -> None:
    import onnx

    from onnxverify.training.models import build_model
    from onnxverify.training.trainer import CHECKPOINT, prepare_dataset, train

    name = run_name(spec, args)
    folder = Path(args.root) / name
    work = folder / "train"
    cfg = make_run_config(spec, args)
    ckpt = work / CHECKPOINT
    if ckpt.is_file():
        import torch

        done = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
        if done >= cfg.recipe.epochs:
            _stamp(f"[{name}] already trained ({done} epochs); skipping")
            return
    folder.mkdir(parents=True, exist_ok=True)
    initial = folder / "initial.onnx"
    ds = prepare_dataset(cfg)
    if not initial.is_file():
        model = build_model(spec["model"], spec["activation"], input_shape=ds.input_shape, num_classes=ds.num_classes,
                            eta=cfg.recipe.eta_start, seed=cfg.seed)
        onnx.save_model(model, str(initial))
    _stamp(f"[{name}] training {cfg.recipe.epochs} epochs on {ds.x_train.shape[0]} images "
           f"({'resuming' if ckpt.is_file() else 'from scratch'}); log {work / 'log.jsonl'}")
    t0 = time.perf_counter()
    train(str(initial), cfg, output=None, workdir=work, resume=ckpt.is_file(), dataset=ds,
          echo=lambda s: _stamp(f"[{name}] {s}"), evaluate=False)
    _stamp(f"[{name}] training done in {time.perf_counter() - t0:.0f} s")


def eval_phase(spec: Dict[str, str], args) -> Optional[dict]:
    from onnxverify.training.trainer import finish_from_checkpoint
    from onnxverify.training.trainer import CHECKPOINT

    name = run_name(spec, args)
    folder = Path(args.root) / name
    work = folder / "train"
    if not (work / CHECKPOINT).is_file():
        _stamp(f"[{name}] no checkpoint; train it first")
        return None
    out = folder / f"{name}.onnx"
    _stamp(f"[{name}] exporting and evaluating {out}")
    res = finish_from_checkpoint(work, out, eps_test=tuple(args.eps_test), n_test=args.n_test,
                                 crown_n=args.crown_n, pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
                                 echo=lambda s: _stamp(f"[{name}] {s}"), progress=False)
    (folder / "eval.json").write_text(json.dumps(res, indent=2))
    return res


def collect(args, specs: List[Dict[str, str]]) -> List[dict]:
    rows = []
    for spec in specs:
        name = run_name(spec, args)
        folder = Path(args.root) / name
        ev_path, log_path = folder / "eval.json", folder / "train" / "log.jsonl"
        if not ev_path.is_file():
            continue
        ev = json.loads(ev_path.read_text())
        log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] if log_path.is_file() else []
        times = [h["time_s"] for h in log]
        rows.append({"name": name, **spec, "epochs": len(log), "evaluation": ev["evaluation"],
                     "s_per_epoch": sum(times) / len(times) if times else None, "train_s": sum(times),
                     "s_per_certified_epoch": (lambda t: sum(t) / len(t) if t else None)(
                         [h["time_s"] for h in log if h["eps"] > 0]),
                     "eval_time_s": ev.get("time_s")})
    return rows


def status(args, specs: List[Dict[str, str]]) -> List[dict]:
    """Progress of each run from its log: epochs done, time per clean / certified epoch, the
    projected training time of the whole schedule, and the last per-epoch test errors."""
    rows = []
    for spec in specs:
        name = run_name(spec, args)
        log_path = Path(args.root) / name / "train" / "log.jsonl"
        if not log_path.is_file():
            continue
        log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        cfg = make_run_config(spec, args).recipe
        clean = [h["time_s"] for h in log if h["eps"] == 0]
        cert = [h["time_s"] for h in log if h["eps"] > 0]
        c = sum(clean) / len(clean) if clean else None
        v = sum(cert) / len(cert) if cert else None
        n_clean = min(cfg.epochs, int(cfg.eps_start))
        projected = (n_clean * (c or 0.0) + (cfg.epochs - n_clean) * (v or c or 0.0)) if (c or v) else None
        last = log[-1]
        rows.append({"name": name, **spec, "epochs_done": len(log), "epochs": cfg.epochs,
                     "s_per_clean_epoch": c, "s_per_certified_epoch": v, "train_s_so_far": sum(clean) + sum(cert),
                     "projected_train_s": projected, "last": {k: last.get(k) for k in (
                         "epoch", "eps", "loss", "test_clean_err", "test_pgd_err", "test_ibp_verified_err", "eps_eval")}})
    return rows


def print_status(rows: List[dict]) -> None:
    from onnxverify.report.tables import format_table

    lines = []
    for r in rows:
        last = r["last"]
        lines.append([r["name"], f"{r['epochs_done']}/{r['epochs']}", f"{r['s_per_clean_epoch'] or 0:.0f}",
                      f"{r['s_per_certified_epoch'] or 0:.0f}", f"{r['train_s_so_far'] / 3600:.2f}",
                      f"{(r['projected_train_s'] or 0) / 3600:.1f}", f"{last['eps']:.3g}", pct(last.get("test_clean_err")),
                      pct(last.get("test_pgd_err")), pct(last.get("test_ibp_verified_err"))])
    print(format_table(["run", "epochs", "s/clean ep", "s/cert ep", "h so far", "h projected", "eps now",
                        "test clean", "test PGD", "test IBP-ver"], lines))


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def print_table(rows: List[dict]) -> None:
    if not rows:
        print("no evaluated runs")
        return
    eps_all = sorted({float(e) for r in rows for e in r["evaluation"]})
    head = ["model", "method", "activation"]
    for e in eps_all:
        head += [f"PGD@{e:g}", f"IBP@{e:g}", f"CROWN-LBP@{e:g}"]
    with_paper = 0.4 in eps_all
    head += ["clean", "s/epoch", "train h"] + (["paper DM-large IBP@0.4"] if with_paper else [])
    lines = []
    for r in rows:
        line = [r["model"], r["method"], LABEL.get(r["activation"], r["activation"])]
        clean = None
        for e in eps_all:
            ev = r["evaluation"].get(f"{e:g}")
            if ev is None:
                line += ["", "", ""]
                continue
            clean = ev["clean_err"]
            crown = ev["verified_err"].get("crown-lbp")
            cn = ev.get("n_by_method", {}).get("crown-lbp", ev["n"])
            ibp_s = ev.get("ibp_err_on_sample", {}).get("crown-lbp")
            line += [pct(ev.get("pgd_err")), pct(ev["verified_err"].get("ibp")),
                     pct(crown) + ("" if cn == ev["n"] else f" (n={cn}" + (
                         "" if ibp_s is None else f"; IBP {pct(ibp_s)}") + ")")]
        paper = PAPER_DM_LARGE.get((r["method"], r["activation"]))
        line += [pct(clean), f"{r['s_per_epoch']:.0f}" if r["s_per_epoch"] else "", f"{r['train_s'] / 3600:.2f}"]
        if with_paper:
            line.append("" if paper is None else f"{paper:.2f}")
        lines.append(line)
    from onnxverify.report.tables import format_table

    print(format_table(head, lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=("train", "eval", "table", "status", "all"), default="all")
    p.add_argument("--runs", default="dm-small:ibp:relu,dm-small:ibp:paramramp")
    p.add_argument("--root", default=str(HERE / "paper_runs"), help="run folders (default: benchmarks/paper_runs)")
    p.add_argument("--mnist-dir", default=str(MNIST_DIR))
    p.add_argument("--epochs", type=int, default=200, help="200 = the paper; fewer scales the schedule")
    p.add_argument("--n-train", type=int, default=None, help="training subset (default: all 60k)")
    p.add_argument("--settings", default=None, help="JSON of extra config settings, e.g. '{\"mtl_alpha\": 0.5}'")
    p.add_argument("--tag", default="", help="suffix of the run folders")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-samples", type=int, default=1000, help="test images for the per-epoch log")
    p.add_argument("--eval-pgd-steps", type=int, default=10, help="per-epoch PGD steps (0 = off)")
    p.add_argument("--eps-test", type=lambda s: [float(v) for v in s.split(",")], default=[0.2, 0.3, 0.4])
    p.add_argument("--n-test", type=int, default=None, help="final evaluation on a random test subset")
    p.add_argument("--crown-n", type=int, default=None, help="CROWN-LBP on a random sample of this size")
    p.add_argument("--pgd-steps", type=int, default=200)
    p.add_argument("--pgd-restarts", type=int, default=10)
    p.add_argument("--json", default=None, help="write the table rows as JSON")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    specs = [parse_run(r) for r in args.runs.split(",") if r.strip()]
    if args.phase in ("train", "all"):
        for spec in specs:
            train_phase(spec, args)
    if args.phase in ("eval", "all"):
        for spec in specs:
            eval_phase(spec, args)
    if args.phase == "status":
        rows = status(args, specs)
        print_status(rows)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    rows = collect(args, specs)
    print_table(rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
