"""The certified-training loop: ONNX in, trained + checked ONNX and a model card out.

:func:`train` takes an ONNX model (path or ``ModelProto``), a :class:`~.config.TrainConfig`
and an output path, and

1. converts the model (:class:`~.tied.TrainableNetwork`: onnx2torch + the verifier's IR with
   tied parameters);
2. trains with Adam: per batch the eps, kappa, beta and eta schedules (epoch position
   ``t = epoch + batch / batches``), the IBP or CROWN-IBP loss, the warm-up regularisers
   during the eps ramp (when ``reg_lambda > 0``), gradient clipping, and ParamRamp's ``r``
   initialised from mean activations when eps starts (LeakyReLU before), with optional noise;
   lr milestones per epoch;
3. per epoch: a JSONL log line (losses, eps, kappa, beta, eta, lr, train clean / IBP verified
   error, test clean / IBP verified error at ``eps_eval``, time) and a checkpoint
   (``<workdir>/checkpoint.pt``: model, optimiser, RNG, schedule state); ``resume=True``
   continues from it after an interruption;
4. exports the model at the final eta (:func:`~.export.export_trained`), evaluates the
   *exported file* (:func:`~.evaluate.evaluate_onnx`: clean, PGD, IBP and CROWN-LBP verified
   error at every test eps) and writes the model card beside it.

The workdir defaults to ``<output without suffix>.train/``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx
import torch

from .config import TrainConfig
from .data import Dataset, load_dataset, subset
from .schedules import beta_schedule, kappa
from .tied import TrainableNetwork, available_methods

__all__ = ["TrainResult", "train", "finish_from_checkpoint", "prepare_dataset", "load_onnx", "check_compatible",
           "default_workdir"]

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


@dataclass
class TrainResult:
    """``net``: the trained network; ``history``: the per-epoch log records; ``output``: the
    exported file (None if not exported); ``evaluation``: ``{eps: evaluate_onnx result}``;
    ``card``: the model card dict; ``export_check``: the export check report."""

    net: TrainableNetwork
    history: List[Dict]
    config: TrainConfig
    output: Optional[Path] = None
    evaluation: Dict = field(default_factory=dict)
    card: Dict = field(default_factory=dict)
    export_check: Dict = field(default_factory=dict)
    workdir: Optional[Path] = None


def default_workdir(output) -> Path:
    p = Path(output)
    return p.with_name(p.stem + ".train")


def load_onnx(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from onnxverify.onnx.importer import load_model

    return load_model(model)


def prepare_dataset(config: TrainConfig, dataset: Optional[Dataset] = None) -> Dataset:
    """The data set of ``config`` (or ``dataset``), subset to ``n_train``/``n_test``, with the
    recipe's augmentation flag applied when the recipe asks for it."""
    ds = dataset if dataset is not None else load_dataset(config.data)
    if config.n_train is not None or config.n_test is not None:
        ds = subset(ds, config.n_train, config.n_test, seed=config.seed)
    if config.recipe.augment and not ds.augment:
        import dataclasses

        ds = dataclasses.replace(ds, augment=True)
    return ds


def check_compatible(net: TrainableNetwork, ds: Dataset) -> None:
    if tuple(net.input_shape) != tuple(ds.input_shape):
        c, h, w = ds.input_shape
        raise ValueError(f"the model expects inputs of shape {tuple(net.input_shape)} but data set {ds.name} has "
                         f"{tuple(ds.input_shape)} (build the model with --input-shape {c},{h},{w})")
    if net.num_classes < ds.num_classes:
        raise ValueError(f"the model has {net.num_classes} outputs but data set {ds.name} has {ds.num_classes} "
                         f"classes (build it with --classes {ds.num_classes})")


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class _Meter:
    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    def add(self, key: str, value: float, n: int = 1) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value) * n
        self.counts[key] = self.counts.get(key, 0) + n

    def mean(self, key: str) -> Optional[float]:
        return self.sums[key] / self.counts[key] if self.counts.get(key) else None

    def reduce(self, dist, device) -> None:
        """Sum the sums and counts over the processes of a data-parallel run."""
        both = dist.sum_values({**{"s:" + k: v for k, v in self.sums.items()},
                                **{"c:" + k: float(v) for k, v in self.counts.items()}}, device)
        self.sums = {k[2:]: v for k, v in both.items() if k.startswith("s:")}
        self.counts = {k[2:]: int(round(v)) for k, v in both.items() if k.startswith("c:")}


def train(model, config: TrainConfig, output=None, workdir=None, resume: bool = False,
          dataset: Optional[Dataset] = None, echo: Optional[Callable[[str], None]] = print,
          evaluate: bool = True) -> TrainResult:
    """Train ``model`` (ONNX path or ``ModelProto``) with ``config``; see the module docstring.

    ``output``: where to export the trained ONNX model (None: no export, no evaluation, and
    no checkpoints unless ``workdir`` is given).  ``echo``: receives one summary line per
    epoch (None: silent).  ``evaluate``: evaluate the exported file (clean/PGD/verified).
    """
    rec = config.recipe
    from .schedules import TRAIN_METHODS

    if rec.method not in TRAIN_METHODS:
        raise ValueError(f"method must be one of {', '.join(TRAIN_METHODS)}, got {rec.method!r}")
    if rec.method == "crown-ibp" and "crown-ibp" not in available_methods():
        raise ValueError("method 'crown-ibp' is not available in this onnxverify (bound methods: "
                         f"{', '.join(available_methods())}); use --method ibp")
    say = echo or (lambda s: None)
    from .evaluate import parse_method

    for m in config.verify_methods:
        parse_method(m)  # a typo fails now, not after training
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} requested but torch sees no CUDA device")
    from .distributed import from_env

    dist = from_env(config.device)
    main = dist is None or dist.is_main
    device = config.device
    if dist is not None and device.startswith("cuda"):
        device = f"cuda:{dist.local_rank}"
    if not main:
        say, output = (lambda s: None), None
    workdir = Path(workdir) if workdir is not None else (default_workdir(output) if output is not None else None)
    ckpt_path = workdir / CHECKPOINT if workdir is not None else None
    log_path = workdir / LOG if workdir is not None else None

    ds = prepare_dataset(config, dataset)
    proto = load_onnx(model)
    state = None
    if resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {ckpt_path}")
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        proto = onnx.load_model_from_string(state["model_onnx"])
        if state.get("config") != config.to_dict():
            say("note: the configuration differs from the checkpoint's; continuing with the new one")

    if config.threads:
        torch.set_num_threads(int(config.threads))
    torch.manual_seed(config.seed)
    gen = torch.Generator(device="cpu").manual_seed(config.seed + 1)
    net = TrainableNetwork(proto, device=device)
    check_compatible(net, ds)
    if output is not None and evaluate and state is None:
        _say_plan(proto, ds, config, say)
    if config.reinit != "keep" and state is None:
        from .init import default_init_, ibp_init_

        (ibp_init_ if config.reinit == "ibp" else default_init_)(net.module, generator=gen)
    params = list(net.parameters())
    if rec.optimizer.lower() != "adam":
        raise ValueError(f"optimizer {rec.optimizer!r} is not supported (adam)")
    opt = torch.optim.Adam(params, lr=rec.lr, weight_decay=rec.weight_decay)

    from .init import r_noise
    from .losses import certified_loss

    eps_s, eta_s, lr_s = rec.eps_schedule(), rec.eta_schedule(), rec.lr_schedule()
    history: List[Dict] = []
    start_epoch, r_ready = 0, not (net.has_paramramp and config.r_init == "mean")
    if state is not None:
        net.module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["generator"])
        start_epoch, r_ready, history = state["epoch"], state["r_ready"], list(state["history"])
        say(f"resuming from {ckpt_path} after epoch {start_epoch}")
    elif not r_ready:
        from .init import paramramp_linear_mode_

        paramramp_linear_mode_(net)  # LeakyReLU(eta) until eps starts
    if dist is not None:
        dist.broadcast_parameters(list(net.module.parameters()) + list(net.module.buffers()))
        say(f"data-parallel training on {dist.world} processes ({dist.backend}); batch {rec.batch_size} split "
            f"into shards of about {math.ceil(rec.batch_size / dist.world)}")
    if workdir is not None and main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        with open(log_path, "w") as f:  # rewrite: drops lines of epochs after the checkpoint
            for h in history:
                f.write(json.dumps(h) + "\n")
    if rec.dataset and rec.dataset != ds.name:
        say(f"note: recipe {rec.name!r} is meant for {rec.dataset}; training on {ds.name}")
    if eps_s.end_epoch > rec.epochs:
        say(f"note: eps reaches {rec.eps_train} only at epoch {eps_s.end_epoch:g}, after the last epoch ({rec.epochs})")

    nb = max(1, math.ceil(ds.x_train.shape[0] / rec.batch_size))
    low, high = (torch.from_numpy(a).to(net.device) for a in ds.normalized_range())
    eps_scale = torch.from_numpy(ds.eps_normalized(1.0)).to(net.device)  # (C,1,1): eps / std
    try:
        for epoch in range(start_epoch, rec.epochs):
            lr = lr_s.value(epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            meter = _Meter()
            rng = np.random.default_rng([config.seed, epoch])
            t_epoch = time.perf_counter()
            bar = _progress(config.progress, nb, f"epoch {epoch + 1}/{rec.epochs}")
            net.train()
            for i, (xb, yb) in enumerate(ds.train_batches(rec.batch_size, rng=rng)):
                t = epoch + i / nb
                eps_t = eps_s.value(t)
                k = kappa(eps_t, rec.eps_train, rec.kappa_end)
                beta = beta_schedule(eps_t, rec.eps_train, rec.beta_end) if rec.method == "crown-ibp" else 0.0
                eta = eta_s.value(t)
                net.set_eta(eta)
                if not r_ready and eps_t > 0:
                    means = _init_r(net, ds, config)
                    if dist is not None:
                        dist.broadcast_parameters([m.r for m in net.paramramps])
                    r_ready = True
                    say(f"epoch {epoch + 1}: ParamRamp r initialised from mean activations (layer means "
                        + ", ".join(f"{m:.3g}" for m in means) + ")")
                    net.train()
                if dist is not None:
                    xb, yb = xb[dist.shard(xb.shape[0])], yb[dist.shard(yb.shape[0])]
                x = torch.from_numpy(ds.normalize(xb)).to(net.device)
                y = torch.from_numpy(yb).to(net.device)
                lower = torch.maximum(x - eps_t * eps_scale, low)
                upper = torch.minimum(x + eps_t * eps_scale, high)
                reg_w = rec.reg_lambda * (1.0 - eps_t / rec.eps_train) if (
                    rec.reg_lambda > 0 and eps_t > 0 and eps_s.in_ramp(t)) else 0.0
                with r_noise(net, config.r_noise if eps_t > 0 else 0.0, gen):
                    terms = certified_loss(net, x, y, lower, upper, eps=eps_t, kappa=k, method=rec.method, beta=beta,
                                           crown_strategy=config.crown_strategy, reg_weight=reg_w, reg_tau=rec.reg_tau,
                                           mtl_alpha=rec.mtl_alpha, sabr_lambda=rec.sabr_lambda,
                                           adv_steps=rec.adv_steps, eps_scale=eps_scale, generator=gen)
                    loss_value = float(terms.loss.detach())
                    finite = math.isfinite(loss_value) if dist is None else dist.all_finite(loss_value, net.device)
                    if not finite:
                        raise FloatingPointError(f"the loss became {loss_value} at epoch {epoch + 1}, batch {i + 1} "
                                                 "(lower the learning rate or slow down the eps ramp)")
                    opt.zero_grad(set_to_none=True)
                    terms.loss.backward()
                if dist is not None:
                    dist.average_gradients(params, x.shape[0])
                if rec.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, rec.grad_clip)
                opt.step()
                bsz = x.shape[0]
                meter.add("loss", loss_value, bsz)
                meter.add("loss_clean", float(terms.clean.detach()), bsz)
                meter.add("train_clean_err", float((terms.logits.argmax(1) != y).float().mean()), bsz)
                if terms.robust is not None:
                    meter.add("loss_robust", float(terms.robust.detach()), bsz)
                    meter.add("train_ibp_verified_err" if rec.method in ("ibp", "mtl-ibp") else "train_verified_err",
                              float(1.0 - (terms.margin_lower > 0).all(dim=1).float().mean()), bsz)
                if terms.reg is not None:
                    meter.add("loss_reg", float(terms.reg.detach()), bsz)
                for key, v in terms.info.items():
                    meter.add(key, v, bsz)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", eps=f"{eps_t:.3g}", refresh=False)
            bar.close()
            if dist is not None:
                meter.reduce(dist, net.device)
            train_time = time.perf_counter() - t_epoch
            record = {"epoch": epoch + 1, "lr": lr, "eps": eps_t, "kappa": k, "beta": beta,
                      "eta": eta, "r_initialised": bool(r_ready)}
            for key in ("loss", "loss_clean", "loss_robust", "loss_adv", "loss_ibp", "loss_reg", "reg_tightness", "reg_relu",
                        "train_clean_err", "train_ibp_verified_err", "train_verified_err"):
                v = meter.mean(key)
                if v is not None:
                    record[key] = v
            record["time_s"] = train_time
            if dist is not None:
                record["processes"] = dist.world
            if config.eval_samples != 0 and main:
                from .evaluate import evaluate_tied

                t0 = time.perf_counter()
                ev = evaluate_tied(net, ds, config.eps_eval, n_test=config.eval_samples,
                                   batch_size=config.eval_batch_size, seed=config.seed,
                                   pgd_steps=config.eval_pgd_steps, pgd_restarts=config.eval_pgd_restarts,
                                   statuses=config.eval_statuses)
                record.update({"eps_eval": config.eps_eval, "test_clean_err": ev["clean_err"],
                               "test_ibp_verified_err": ev["ibp_err"]})
                if "pgd_err" in ev:
                    record["test_pgd_err"] = ev["pgd_err"]
                if "status" in ev:
                    record["status"] = ev["status"]
                record["eval_time_s"] = time.perf_counter() - t0
            history.append(record)
            say(_summary(record, rec.epochs))
            if dist is not None:
                dist.barrier()  # rank 0 evaluated; the others wait here
            if log_path is not None and main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if ckpt_path is not None and main and ((epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == rec.epochs):
                _atomic_save({"version": 1, "epoch": epoch + 1, "module": net.module.state_dict(),
                              "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                              "generator": gen.get_state(), "r_ready": r_ready, "history": history,
                              "config": config.to_dict(), "model_onnx": proto.SerializeToString()}, ckpt_path)
    except KeyboardInterrupt:
        where = f"; resume with --resume (checkpoint {ckpt_path})" if ckpt_path is not None else ""
        say(f"interrupted after {len(history)} epoch(s){where}")
        raise
    finally:
        if dist is not None:
            dist.close()

    final_eta = eta_s.value(float(rec.epochs))
    net.set_eta(final_eta)
    result = TrainResult(net=net, history=history, config=config, workdir=workdir)
    if output is not None:
        from .finish import finish

        done = finish(net, history, config, proto, ds, Path(output), evaluate=evaluate, say=say)
        result.output, result.export_check = Path(output), done["export_check"]
        result.evaluation, result.card = done["evaluation"], done["card"]
    return result


def _say_plan(proto, ds: Dataset, config: TrainConfig, say) -> None:
    """Print the final evaluation's plan (labelled phases, worst-case time) before training."""
    from .evaluate import estimate_evaluation, format_estimate

    rec = config.recipe
    est = estimate_evaluation(proto, ds, tuple(rec.eps_test or (rec.eps_train,)), config.verify_methods, config.pgd,
                              config.pgd_steps, config.pgd_restarts, n_test=config.n_test)
    say(format_estimate(est) + "\n  (timed on the untrained model; the plan is printed again before the evaluation)")


def _init_r(net, ds: Dataset, config: TrainConfig) -> list:
    from .init import init_paramramp_r_

    n = min(config.r_init_samples, ds.x_train.shape[0])
    idx = np.sort(np.random.default_rng([config.seed, 7]).choice(ds.x_train.shape[0], size=n, replace=False))
    xs = ds.normalize(ds.x_train[idx])
    batches = (torch.from_numpy(xs[s:s + config.eval_batch_size]).to(net.device)
               for s in range(0, n, config.eval_batch_size))
    return init_paramramp_r_(net, batches, floor=config.r_floor)


def _summary(r: Dict, epochs: int) -> str:
    s = f"epoch {r['epoch']}/{epochs}  eps {r['eps']:.4g}  kappa {r['kappa']:.3f}"
    if r.get("beta"):
        s += f"  beta {r['beta']:.3f}"
    s += f"  eta {r['eta']:.4g}  loss {r['loss']:.4f}  train err {100 * r['train_clean_err']:.2f}%"
    if "train_ibp_verified_err" in r:
        s += f"  train IBP-verified err {100 * r['train_ibp_verified_err']:.2f}%"
    elif "train_verified_err" in r:
        s += f"  train verified err (training bound) {100 * r['train_verified_err']:.2f}%"
    if "test_clean_err" in r:
        s += (f"  | test err {100 * r['test_clean_err']:.2f}%  IBP-verified err {100 * r['test_ibp_verified_err']:.2f}%"
              f" (eps {r['eps_eval']:g})")
        if "test_pgd_err" in r:
            s += f"  PGD err {100 * r['test_pgd_err']:.2f}%"
    return s + f"  {r['time_s']:.1f}s"


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not enabled)


def finish_from_checkpoint(workdir, output, evaluate: bool = True, echo: Optional[Callable[[str], None]] = print,
                           crown_n: Optional[int] = None, **overrides) -> Dict:
    """:func:`~.finish.finish` for the network saved in ``workdir``'s checkpoint (its config and data
    set).  ``crown_n``: CROWN-LBP (and any other linear method) on a random sample of that
    many test images.  Other keywords: see :func:`finish`."""
    from .finish import config_from_dict, finish

    ckpt = Path(workdir) / CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = config_from_dict(state["config"])
    proto = onnx.load_model_from_string(state["model_onnx"])
    net = TrainableNetwork(proto)
    net.module.load_state_dict(state["module"])
    net.set_eta(cfg.recipe.eta_schedule().value(float(state["epoch"])))  # the eta of the last finished epoch
    ds = prepare_dataset(cfg)
    samples = None
    if crown_n is not None:
        samples = {m: int(crown_n) for m in cfg.verify_methods if not m.startswith("ibp")}
    return finish(net, list(state["history"]), cfg, proto, ds, Path(output), evaluate=evaluate,
                  say=echo or (lambda s: None), method_samples=samples, **overrides)
