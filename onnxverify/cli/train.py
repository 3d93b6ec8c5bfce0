"""``onnxverify model | train | evaluate``: the certified-training commands.

Registered by :mod:`onnxverify.cli` through :data:`COMMANDS`.  This module imports without
torch (torch, onnx2torch and the trainer are imported inside the command bodies), so the
verifier's CLI works on a base install; ``model`` needs only onnx.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import OnnxVerifyError
from ..report.tables import format_table
from ..training.config import DEFAULT_PRESET, TrainConfig
from ..training.schedules import PRESETS, TRAIN_METHODS
from .common import friendly_errors

__all__ = ["COMMANDS", "model_cmd", "train_cmd", "evaluate_cmd"]


def _parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected C,H,W (e.g. 1,28,28), got {text!r}") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise click.BadParameter(f"expected three positive sizes C,H,W, got {text!r}")
    return shape


def _floats(text):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def _need_torch():
    """A missing torch / onnx2torch is a user's fix: one ``error:`` line, exit 2."""
    try:
        import onnx2torch  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise OnnxVerifyError(f"training needs torch and onnx2torch ({e.name} is missing): "
                              "pip install 'onnxverify[train]'") from None


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
@click.command("model")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the ONNX model.")
@click.option("--activation", type=click.Choice(["relu", "leaky", "paramramp"]), default="relu", show_default=True)
@click.option("--bn/--no-bn", "batchnorm", default=None, help="BatchNorm after every layer but the last "
              "(default: on for cnn7-bn only).")
@click.option("--input-shape", default="1,28,28", show_default=True, help="C,H,W of one input.")
@click.option("--classes", default=10, show_default=True, type=int, help="Number of outputs.")
@click.option("--eta", default=0.01, show_default=True, type=float, help="LeakyReLU / ParamRamp leak slope.")
@click.option("--r-init", default=1.0, show_default=True, type=float, help="Initial ParamRamp bend point r.")
@click.option("--init", "init", type=click.Choice(["default", "ibp"]), default="default", show_default=True,
              help="Weight initialisation (ibp: the fast recipe's IBP initialisation).")
@click.option("--hidden", default=None, help="MLP hidden widths, e.g. 100,100.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--list", "list_only", is_flag=True, help="List the architectures and exit.")
@friendly_errors
def model_cmd(name, output, activation, batchnorm, input_shape, classes, eta, r_init, init, hidden, seed, list_only):
    """Write architecture NAME (dm-small, dm-medium, dm-large, cnn7-bn, mlp) as ONNX."""
    from ..training.models import build_model, describe_architectures

    if list_only or name is None:
        click.echo(describe_architectures())
        if name is None and not list_only:
            raise click.UsageError("give an architecture NAME (listed above) and -o model.onnx")
        return
    if output is None:
        raise click.UsageError("-o/--output is required")
    hidden_sizes = tuple(int(v) for v in _floats(hidden)) if hidden else None
    model = build_model(name, activation=activation, batchnorm=batchnorm, input_shape=_parse_shape(input_shape),
                        num_classes=classes, eta=eta, r_init=r_init, init=init, seed=seed, hidden=hidden_sizes)
    import onnx

    onnx.save_model(model, output)
    from onnxverify.onnx.importer import import_model

    counts = import_model(model).op_counts()
    n_params = sum(int(__import__("numpy").prod(t.dims)) for t in model.graph.initializer)
    meta = {p.key: p.value for p in model.metadata_props}
    click.echo(f"wrote {output}: {meta['onnxverify.architecture']}, activation {activation}, "
               f"BN {meta['onnxverify.batchnorm']}, input {_parse_shape(input_shape)}, {classes} classes, "
               f"{n_params} parameters")
    click.echo("IR ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
_BASE = PRESETS[DEFAULT_PRESET]


def _fmt(v):
    if isinstance(v, (tuple, list)):
        return ",".join(_fmt(x) for x in v) or "none"
    if isinstance(v, float):
        return f"{v:.6g}"
    return "none" if v is None else str(v)


def _recipe(flag, field, text, **kw):
    """An option for a recipe field: its default comes from the preset, and the help says so."""
    return click.option(flag, field, default=None, show_default=False,
                        help=f"{text} [default: the preset's; {DEFAULT_PRESET}: {_fmt(getattr(_BASE, field))}]", **kw)


def _run(flag, field, text, **kw):
    """An option for a run field (TrainConfig's default, shown)."""
    default = TrainConfig.__dataclass_fields__[field].default
    return click.option(flag, field, default=None, show_default=False, help=f"{text} [default: {_fmt(default)}]", **kw)


def _preset_table() -> str:
    rows = []
    for name, p in PRESETS.items():
        rows.append(f"{name}: {p.model}, {p.method}, eps {p.eps_train:.4g}, {p.epochs} epochs, batch {p.batch_size}, "
                    f"lr {p.lr:g}, eps 0 for {p.eps_start:g} epochs then a {p.eps_ramp:g}-epoch ramp")
    return "\b\nPresets (--preset; flags and --config override their fields):\n" + "\n".join(rows)


@click.command("train", epilog=_preset_table())
@click.argument("model")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Trained ONNX model to write.")
@_run("--data", "data", "digits | mnist:DIR | cifar10:DIR.")
@_recipe("--eps", "eps_train", "Training eps (raw pixel units); also the test eps unless --eps-test is given.",
         type=float)
@_recipe("--eps-test", "eps_test", "Comma-separated test radii of the final evaluation.")
@_recipe("--method", "method", "Training bound: IBP, CROWN-IBP, MTL-IBP (IBP + PGD loss), SABR (IBP of a small box "
         "around a PGD point).", type=click.Choice(list(TRAIN_METHODS)))
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help=f"Recipe whose fields the other flags override. [default: {DEFAULT_PRESET}]")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON/TOML file of settings (see README); precedence preset < config < flags.")
@_recipe("--epochs", "epochs", "Training epochs.", type=int)
@_recipe("--batch-size", "batch_size", "Training batch size.", type=int)
@_recipe("--lr", "lr", "Adam learning rate.", type=float)
@_recipe("--lr-milestones", "lr_milestones", "Epochs at which lr is multiplied by --lr-gamma, e.g. 130,190.")
@_recipe("--lr-gamma", "lr_gamma", "Factor of the lr at each milestone.", type=float)
@_recipe("--eps-start", "eps_start", "First epoch with eps > 0 (0-based).", type=float)
@_recipe("--eps-ramp", "eps_ramp", "Epochs of the eps ramp.", type=float)
@_recipe("--eps-kind", "eps_kind", "Shape of the eps ramp.", type=click.Choice(["linear", "smoothed"]))
@_recipe("--kappa-end", "kappa_end", "Weight of the clean loss at full eps (1 at eps 0).", type=float)
@_recipe("--beta-end", "beta_end", "CROWN-IBP: weight of the CROWN-IBP bound at full eps (1 at eps 0).", type=float)
@_recipe("--eta-start", "eta_start", "LeakyReLU/ParamRamp slope before the ramp.", type=float)
@_recipe("--eta-end", "eta_end", "Slope after the ramp (the exported value).", type=float)
@_recipe("--grad-clip", "grad_clip", "Max gradient norm (none = no clipping).", type=float)
@_recipe("--reg-lambda", "reg_lambda", "Weight of the fast recipe's warm-up regularisers (0 = off).", type=float)
@_recipe("--weight-decay", "weight_decay", "Adam weight decay.", type=float)
@_recipe("--mtl-alpha", "mtl_alpha", "MTL-IBP: weight of the IBP loss (1 - alpha weighs the PGD loss).", type=float)
@_recipe("--sabr-lambda", "sabr_lambda", "SABR: radius of the propagated box as a fraction of eps.", type=float)
@_recipe("--adv-steps", "adv_steps", "MTL-IBP/SABR: PGD steps of the training attack.", type=int)
@_run("--r-noise", "r_noise", "Noise on ParamRamp r, x layer mean of r (0 = off).", type=float)
@_run("--r-init", "r_init", "ParamRamp r: mean activations when eps starts, or keep the file's.",
      type=click.Choice(["mean", "keep"]))
@_run("--reinit", "reinit", "Re-initialise the conv/linear weights of the model file.",
      type=click.Choice(["keep", "ibp", "default"]))
@click.option("--activation", type=click.Choice(["relu", "leaky", "paramramp"]), default="relu", show_default=True,
              help="When MODEL is an architecture name.")
@click.option("--bn/--no-bn", "batchnorm", default=None, help="When MODEL is an architecture name. "
              "[default: the preset's]")
@click.option("--init", "init", type=click.Choice(["default", "ibp"]), default=None,
              help="When MODEL is an architecture name. [default: the preset's]")
@_run("--seed", "seed", "Seed of the data order, init, PGD and noise.", type=int)
@_run("--device", "device", "Torch device: cpu or cuda.")
@_run("--threads", "threads", "Torch CPU threads (none: torch's choice).", type=int)
@click.option("--nproc", type=int, default=None, help="Data-parallel training on N processes (torchrun; gloo on "
              "CPU, NCCL on GPUs). [default: 1]")
@_run("--n-train", "n_train", "Use a random subset of the training set (none = all).", type=int)
@_run("--n-test", "n_test", "Use a random subset of the test set (none = all).", type=int)
@_run("--eval-samples", "eval_samples", "Test images for the per-epoch log (0 = none).", type=int)
@_run("--eval-pgd-steps", "eval_pgd_steps", "PGD steps of the per-epoch log (0 = no per-epoch PGD).", type=int)
@click.option("--pgd/--no-pgd", default=None, help="PGD in the final evaluation. [default: on]")
@_run("--pgd-steps", "pgd_steps", "PGD steps of the final evaluation.", type=int)
@_run("--pgd-restarts", "pgd_restarts", "PGD restarts of the final evaluation.", type=int)
@click.option("--methods", default=None, help="Verification methods of the final evaluation. [default: ibp,crown-lbp]")
@click.option("--eval/--no-eval", "do_eval", default=True, help="Evaluate the exported model at the end. "
              "[default: on]")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Checkpoint + log folder. [default: OUTPUT minus .onnx plus .train]")
@click.option("--resume", is_flag=True, help="Continue from the workdir's checkpoint.")
@click.option("--progress/--no-progress", default=None, help="Progress bars. [default: on]")
@friendly_errors
def train_cmd(model, output, data, eps_train, eps_test, method, preset, config_file, epochs, batch_size, lr,
              lr_milestones, lr_gamma, eps_start, eps_ramp, eps_kind, kappa_end, beta_end, eta_start, eta_end,
              grad_clip, reg_lambda, weight_decay, mtl_alpha, sabr_lambda, adv_steps, r_noise, r_init, reinit,
              activation, batchnorm, init, seed, device, threads, nproc, n_train, n_test, eval_samples,
              eval_pgd_steps, pgd, pgd_steps, pgd_restarts, methods, do_eval, workdir, resume, progress):
    """Certified training of MODEL (an ONNX file, or an architecture name such as dm-small).

    Converts the model with onnx2torch, trains it with the verifier's IBP / CROWN-IBP bounds
    (or MTL-IBP / SABR), exports OUTPUT (ONNX taking raw pixels: the data set's normalisation is
    folded in; ParamRamp as the custom op), writes OUTPUT's model card (.card.json), then
    evaluates the exported file and completes the card.  A JSONL log and checkpoints go to the
    workdir.  Before training it prints the final evaluation's plan (phases, worst-case time).
    """
    _need_torch()
    if nproc is not None and nproc > 1:
        _relaunch(nproc)
        return
    from ..training.config import make_config
    from ..training.trainer import default_workdir, train

    milestones = tuple(int(v) for v in _floats(lr_milestones)) if lr_milestones else None
    cfg = make_config(
        preset=preset, config_file=config_file, data=data, eps_train=eps_train, eps_test=_floats(eps_test),
        method=method, epochs=epochs, batch_size=batch_size, lr=lr, lr_milestones=milestones, lr_gamma=lr_gamma,
        eps_start=eps_start, eps_ramp=eps_ramp, eps_kind=eps_kind, kappa_end=kappa_end, beta_end=beta_end,
        eta_start=eta_start, eta_end=eta_end, grad_clip=grad_clip, reg_lambda=reg_lambda, weight_decay=weight_decay,
        mtl_alpha=mtl_alpha, sabr_lambda=sabr_lambda, adv_steps=adv_steps,
        r_noise=r_noise, r_init=r_init, reinit=reinit, seed=seed, device=device, threads=threads, n_train=n_train,
        n_test=n_test, eval_samples=eval_samples, eval_pgd_steps=eval_pgd_steps, pgd=pgd, pgd_steps=pgd_steps,
        pgd_restarts=pgd_restarts, verify_methods=methods, progress=progress)
    work = Path(workdir) if workdir else default_workdir(output)
    source = _model_source(model, cfg, activation, batchnorm, init, work, resume)
    from ..training.export import ExportCheckError

    try:
        res = train(source, cfg, output=output, workdir=work, resume=resume, echo=click.echo, evaluate=do_eval)
    except (FloatingPointError, ExportCheckError) as e:  # user-facing failures, not bugs
        raise OnnxVerifyError(str(e)) from None
    if res.evaluation:
        _print_eval_table(list(res.evaluation.values()))
    if res.output is not None:
        click.echo(f"log: {work / 'log.jsonl'}  checkpoint: {work / 'checkpoint.pt'}")


def _relaunch(nproc: int) -> None:
    """Run this same command under torch's launcher with ``nproc`` processes (minus --nproc)."""
    import subprocess
    import sys

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--no-python", sys.executable, "-c", "from onnxverify.cli import main; main()"] + args
    click.echo(f"running {nproc} processes: torchrun --standalone --nproc_per_node {nproc} onnxverify "
               + " ".join(args))
    rc = subprocess.call(cmd)
    if rc:
        raise click.exceptions.Exit(rc)


def _model_source(model, cfg, activation, batchnorm, init, work: Path, resume: bool):
    """An ONNX path as given, or (for an architecture name) the model built for the data set."""
    p = Path(model)
    if p.exists() or model.lower().endswith(".onnx"):
        return str(p)  # a missing .onnx file gets the loader's one-line error
    from ..training.models import ALIASES, ARCHITECTURES, build_model
    from ..training.trainer import prepare_dataset

    if model.lower() not in ARCHITECTURES and model.lower() not in ALIASES:
        raise click.BadParameter(f"{model!r} is neither an ONNX file nor an architecture "
                                 f"({', '.join(ARCHITECTURES)})", param_hint="MODEL")
    initial = work / "initial.onnx"
    if resume and initial.exists():
        return str(initial)
    ds = prepare_dataset(cfg)
    rec = cfg.recipe
    built = build_model(model, activation=activation, batchnorm=batchnorm if batchnorm is not None else (
        rec.batchnorm or None), input_shape=ds.input_shape, num_classes=ds.num_classes, eta=rec.eta_start,
        init=init or rec.init, seed=cfg.seed)
    work.mkdir(parents=True, exist_ok=True)
    import onnx

    onnx.save_model(built, str(initial))
    click.echo(f"built {model} ({activation}) for {ds.name} {ds.input_shape}: {initial}")
    return str(initial)


def _print_eval_table(evals):
    methods = []
    for ev in evals:
        for m in ev["verified_err"]:
            if m not in methods:
                methods.append(m)
    rows = []
    for ev in evals:
        rows.append([f"{ev['eps']:g}", ev["n"], _pct(ev["clean_err"]), _pct(ev.get("pgd_err"))]
                    + [_pct(ev["verified_err"].get(m)) for m in methods])
    click.echo(format_table(["eps", "n", "clean %", "PGD %"] + [f"{m} verified %" for m in methods], rows))
    missing = sorted({m for ev in evals for m in ev.get("unavailable", [])})
    if missing:
        click.echo(f"(unavailable in this onnxverify: {', '.join(missing)})")


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------
@click.command("evaluate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", default=None, help="digits | mnist:DIR | cifar10:DIR. [default: the model card's data set "
              "(found from any directory), else digits]")
@click.option("--eps", "eps_list", required=True, help="Radius (raw pixel units); comma-separated for several.")
@click.option("--pgd", is_flag=True, help="Also run PGD (--pgd-steps steps, --pgd-restarts restarts).")
@click.option("--pgd-steps", default=200, show_default=True, type=int)
@click.option("--pgd-restarts", default=10, show_default=True, type=int)
@click.option("--methods", default="ibp,crown-lbp", show_default=True,
              help="Verification methods (METHOD[:STRATEGY], tight by default for linear methods).")
@click.option("--n-test", type=int, default=None, help="Evaluate a random subset of the test set. [default: all]")
@click.option("--sample", "sample_n", type=int, default=None,
              help="Run the linear methods (crown-lbp, ...) on a random sample of this many of the test images. "
                   "[default: all]")
@click.option("--no-skip", is_flag=True, help="Run every phase on every image (no skipping of images the cheaper "
              "phases decided; slower, a cross-check of soundness).")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON.")
@click.option("--write-vnnlib", "vnnlib_dir", type=click.Path(file_okay=False), default=None,
              help="Also write a VNN-COMP benchmark folder: one robustness property per test image and eps, "
                   "instances.csv (for `onnxverify run` or any verifier).")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Per-instance timeout in instances.csv.")
@click.option("--progress/--no-progress", default=False, show_default=True)
@friendly_errors
def evaluate_cmd(model, data, eps_list, pgd, pgd_steps, pgd_restarts, methods, n_test, sample_n, no_skip, batch_size,
                 seed, json_path, vnnlib_dir, timeout, progress):
    """Clean, PGD and verified error of an ONNX classifier on a data set's test split.

    Verified errors are computed by onnxverify on the file itself.  Prints the plan (phases,
    worst-case time) first; PGD and the linear methods only run on the images that the cheaper
    phases leave undecided (same numbers for a sound verifier; --no-skip runs everything).
    """
    from ..training.data import load_dataset
    from ..training.evaluate import estimate_evaluation, evaluate_onnx, format_estimate
    from ..training.export import card_data_spec, card_path

    if pgd:
        _need_torch()
    if not Path(model).is_file():
        raise OnnxVerifyError(f"model file not found: {model}")
    if data is None:
        card = card_path(model)
        data = card_data_spec(json.loads(card.read_text()), card) if card.is_file() else "digits"
        click.echo(f"data: {data}")
    ds = load_dataset(data)
    method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
    eps_values = _floats(eps_list) or ()
    samples = {m: sample_n for m in method_list if not m.startswith("ibp")} if sample_n else None
    if vnnlib_dir:
        from ..training.benchmark import write_vnnlib_benchmark

        csv_path = write_vnnlib_benchmark(model, ds, eps_values, vnnlib_dir, n=n_test, seed=seed, timeout=timeout)
        click.echo(f"wrote {csv_path} ({len(eps_values)} eps x {n_test or ds.x_test.shape[0]} test images); "
                   f"run it with: onnxverify run {csv_path}")
    est = estimate_evaluation(model, ds, eps_values, method_list, pgd, pgd_steps, pgd_restarts, n_test=n_test,
                              method_samples=samples)
    click.echo(format_estimate(est))
    evals = []
    for eps in eps_values:
        evals.append(evaluate_onnx(model, ds, eps, methods=method_list, pgd=pgd, pgd_steps=pgd_steps,
                                   pgd_restarts=pgd_restarts, n_test=n_test, batch_size=batch_size, seed=seed,
                                   progress=progress, method_samples=samples, skip_decided=not no_skip))
    _print_eval_table(evals)
    if json_path:
        Path(json_path).write_text(json.dumps({"model": model, "data": data, "results": evals}, indent=2))
        click.echo(f"wrote {json_path}")


# ---------------------------------------------------------------------------------------------
# plot
# ---------------------------------------------------------------------------------------------
@click.command("plot")
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="curves.png", show_default=True,
              help="Image to write (.png, .pdf, .svg).")
@click.option("--title", default=None, help="Figure title. [default: the run's folder name]")
@friendly_errors
def plot_cmd(logs, output, title):
    """Training curves from LOG.jsonl files (a workdir also works): losses, schedules
    (eps, kappa, beta, eta, lr), clean / PGD / IBP-verified error per epoch, and the neuron
    statuses of every activation layer over training (the paper's Figures 4/6).  Several logs
    share the errors panel."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OnnxVerifyError("plot needs matplotlib: pip install matplotlib") from None
    from ..training.curves import plot_curves

    paths = [Path(p) / "log.jsonl" if Path(p).is_dir() else Path(p) for p in logs]
    out = plot_curves(paths, output, title=title)
    click.echo(f"wrote {out}")


COMMANDS = [model_cmd, train_cmd, evaluate_cmd, plot_cmd]
