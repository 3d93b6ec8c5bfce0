"""``onnxverify model | train | evaluate``: the certified-training commands.

Registered by :mod:`onnxverify.cli` through :data:`COMMANDS`.  This module imports without
torch (torch, onnx2torch and the trainer are imported inside the command bodies), so the
verifier's CLI works on a base install; ``model`` needs only onnx.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..report.tables import format_table
from ..training.schedules import PRESETS
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
    try:
        import onnx2torch  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise click.ClickException(f"training needs torch and onnx2torch ({e.name} is missing): "
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
@click.command("train")
@click.argument("model")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Trained ONNX model to write.")
@click.option("--data", default=None, help="digits | mnist:DIR | cifar10:DIR (default: the config's, else digits).")
@click.option("--eps", type=float, default=None, help="Training eps (raw pixel units); also the test eps unless "
              "--eps-test is given.")
@click.option("--eps-test", default=None, help="Comma-separated test radii for the final evaluation.")
@click.option("--method", type=click.Choice(["ibp", "crown-ibp"]), default=None, help="Training bound (default: preset's).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None, help="Recipe (default digits-quick).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON/TOML file of settings (see README).")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--lr-milestones", default=None, help="Epochs at which lr is multiplied by --lr-gamma, e.g. 130,190.")
@click.option("--lr-gamma", type=float, default=None)
@click.option("--eps-start", type=float, default=None, help="First epoch with eps > 0.")
@click.option("--eps-ramp", type=float, default=None, help="Epochs of the eps ramp.")
@click.option("--eps-kind", type=click.Choice(["linear", "smoothed"]), default=None)
@click.option("--kappa-end", type=float, default=None)
@click.option("--beta-end", type=float, default=None)
@click.option("--eta-start", type=float, default=None, help="LeakyReLU/ParamRamp slope before the ramp.")
@click.option("--eta-end", type=float, default=None, help="Slope after the ramp (the exported value).")
@click.option("--grad-clip", type=float, default=None)
@click.option("--reg-lambda", type=float, default=None, help="Warm-up regularisers' weight (0 = off).")
@click.option("--weight-decay", type=float, default=None)
@click.option("--r-noise", type=float, default=None, help="Noise on ParamRamp r, x layer mean of r (0 = off).")
@click.option("--r-init", "r_init", type=click.Choice(["mean", "keep"]), default=None,
              help="ParamRamp r: mean activations when eps starts, or keep the file's.")
@click.option("--reinit", type=click.Choice(["keep", "ibp", "default"]), default=None,
              help="Re-initialise the conv/linear weights of the model file.")
@click.option("--activation", type=click.Choice(["relu", "leaky", "paramramp"]), default="relu", show_default=True,
              help="When MODEL is an architecture name.")
@click.option("--bn/--no-bn", "batchnorm", default=None, help="When MODEL is an architecture name (default: preset's).")
@click.option("--init", "init", type=click.Choice(["default", "ibp"]), default=None,
              help="When MODEL is an architecture name (default: preset's).")
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None, help="cpu (default) or cuda.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--n-train", type=int, default=None, help="Use a random subset of the training set.")
@click.option("--n-test", type=int, default=None, help="Use a random subset of the test set.")
@click.option("--eval-samples", type=int, default=None, help="Test images for the per-epoch log (0 = none).")
@click.option("--pgd/--no-pgd", default=None, help="PGD in the final evaluation (default on).")
@click.option("--pgd-steps", type=int, default=None)
@click.option("--pgd-restarts", type=int, default=None)
@click.option("--methods", default=None, help="Verification methods of the final evaluation (default ibp,crown-lbp).")
@click.option("--eval/--no-eval", "do_eval", default=True, help="Evaluate the exported model at the end.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Checkpoint + log folder (default OUTPUT minus .onnx plus .train).")
@click.option("--resume", is_flag=True, help="Continue from the workdir's checkpoint.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default on).")
@friendly_errors
def train_cmd(model, output, data, eps, eps_test, method, preset, config_file, epochs, batch_size, lr, lr_milestones,
              lr_gamma, eps_start, eps_ramp, eps_kind, kappa_end, beta_end, eta_start, eta_end, grad_clip, reg_lambda,
              weight_decay, r_noise, r_init, reinit, activation, batchnorm, init, seed, device, threads, n_train, n_test,
              eval_samples, pgd, pgd_steps, pgd_restarts, methods, do_eval, workdir, resume, progress):
    """Certified training of MODEL (an ONNX file, or an architecture name such as dm-small).

    Converts the model with onnx2torch, trains it with the verifier's IBP / CROWN-IBP bounds,
    exports OUTPUT (ONNX, ParamRamp as the custom op), evaluates the exported file and writes
    OUTPUT's model card (.card.json), a JSONL log and checkpoints in the workdir.
    """
    _need_torch()
    from ..training.config import make_config
    from ..training.trainer import default_workdir, train

    milestones = tuple(int(v) for v in _floats(lr_milestones)) if lr_milestones else None
    cfg = make_config(
        preset=preset, config_file=config_file, data=data, eps_train=eps, eps_test=_floats(eps_test), method=method,
        epochs=epochs, batch_size=batch_size, lr=lr, lr_milestones=milestones, lr_gamma=lr_gamma,
        eps_start=eps_start, eps_ramp=eps_ramp, eps_kind=eps_kind, kappa_end=kappa_end, beta_end=beta_end,
        eta_start=eta_start, eta_end=eta_end, grad_clip=grad_clip, reg_lambda=reg_lambda, weight_decay=weight_decay,
        r_noise=r_noise, r_init=r_init, reinit=reinit, seed=seed, device=device, threads=threads, n_train=n_train, n_test=n_test,
        eval_samples=eval_samples, pgd=pgd, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts,
        verify_methods=methods, progress=progress)
    work = Path(workdir) if workdir else default_workdir(output)
    source = _model_source(model, cfg, activation, batchnorm, init, work, resume)
    from ..training.export import ExportCheckError

    try:
        res = train(source, cfg, output=output, workdir=work, resume=resume, echo=click.echo, evaluate=do_eval)
    except (FloatingPointError, ExportCheckError) as e:  # user-facing failures, not bugs
        raise click.ClickException(str(e)) from None
    if res.evaluation:
        _print_eval_table(list(res.evaluation.values()))
    click.echo(f"log: {work / 'log.jsonl'}  checkpoint: {work / 'checkpoint.pt'}")


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
@click.option("--data", default=None, help="digits | mnist:DIR | cifar10:DIR (default: the model card's, else digits).")
@click.option("--eps", "eps_list", required=True, help="Radius (raw pixel units); comma-separated for several.")
@click.option("--pgd", is_flag=True, help="Also run PGD (--pgd-steps steps, --pgd-restarts restarts).")
@click.option("--pgd-steps", default=200, show_default=True, type=int)
@click.option("--pgd-restarts", default=10, show_default=True, type=int)
@click.option("--methods", default="ibp,crown-lbp", show_default=True,
              help="Verification methods (METHOD[:STRATEGY], tight by default for linear methods).")
@click.option("--n-test", type=int, default=None, help="Evaluate a random subset of the test set.")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON.")
@click.option("--progress/--no-progress", default=False, show_default=True)
@friendly_errors
def evaluate_cmd(model, data, eps_list, pgd, pgd_steps, pgd_restarts, methods, n_test, batch_size, seed, json_path,
                 progress):
    """Clean, PGD and verified error of an ONNX classifier on a data set's test split.

    Verified errors are computed by onnxverify on the file itself.
    """
    from ..training.data import load_dataset
    from ..training.evaluate import evaluate_onnx
    from ..training.export import card_path

    if pgd:
        _need_torch()
    if data is None:
        card = card_path(model)
        data = json.loads(card.read_text()).get("data", {}).get("spec", "digits") if card.is_file() else "digits"
        click.echo(f"data: {data}")
    ds = load_dataset(data)
    method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
    evals = []
    for eps in _floats(eps_list) or ():
        evals.append(evaluate_onnx(model, ds, eps, methods=method_list, pgd=pgd, pgd_steps=pgd_steps,
                                   pgd_restarts=pgd_restarts, n_test=n_test, batch_size=batch_size, seed=seed,
                                   progress=progress))
    _print_eval_table(evals)
    if json_path:
        Path(json_path).write_text(json.dumps({"model": model, "data": data, "results": evals}, indent=2))
        click.echo(f"wrote {json_path}")


COMMANDS = [model_cmd, train_cmd, evaluate_cmd]
