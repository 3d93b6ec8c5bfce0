"""Evaluation of a classifier stored as ONNX: clean, PGD and verified error (PAPER_NOTES.md §4).

:func:`evaluate_onnx` evaluates *the file a user ships*:

* clean error -- onnxruntime;
* PGD error -- l_inf PGD (sign steps on the cross-entropy, ``steps`` steps of size
  ``2.5 eps / steps``, ``restarts`` random starts; an example counts as broken if it is
  misclassified clean or any restart, at any step, finds a misclassified point) on the file
  converted with onnx2torch; every adversarial point is replayed in onnxruntime, and only
  those onnxruntime misclassifies count;
* verified error -- by onnxverify on the ONNX file (NumPy backend): ``ibp`` and ``crown-lbp``
  (tight strategy) by default; ``METHOD:STRATEGY`` picks another strategy.  A method the
  installed onnxverify lacks is reported as unavailable (``None``), not an error.

Inputs are normalised with the data set's mean/std and the l_inf box (raw radius ``eps``) is
clamped to the normalised data range (``Dataset.input_box``).

:func:`evaluate_tied` is the training-time counterpart (clean and IBP verified error with the
tied IR on torch; what the per-epoch log reports).
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

__all__ = ["DEFAULT_STRATEGY", "parse_method", "evaluate_onnx", "evaluate_tied", "pgd_attack"]

#: strategy used for each verification method unless ``METHOD:STRATEGY`` says otherwise
DEFAULT_STRATEGY = {"ibp": None, "crown-lbp": "tight", "crown-ibp": "tight", "lbp": "tight", "crown": "tight"}


def parse_method(spec: str) -> Tuple[str, Optional[str]]:
    """``"crown-lbp"`` -> ``("crown-lbp", "tight")``; ``"crown-ibp:adaptive"`` -> (.., "adaptive").

    Raises ``ValueError`` for a name that is not one of the paper's methods (a typo) or an
    unknown strategy; a known method the installed onnxverify lacks is *not* an error here."""
    name, _, strategy = str(spec).strip().lower().partition(":")
    if name not in DEFAULT_STRATEGY and not name.startswith("relaxed-crown-"):
        raise ValueError(f"unknown verification method {spec!r}; choose from {', '.join(DEFAULT_STRATEGY)}, "
                         "relaxed-crown-V (optionally METHOD:STRATEGY)")
    if strategy and strategy not in ("constant", "tight", "adaptive"):
        raise ValueError(f"unknown strategy {strategy!r} in {spec!r}; choose constant, tight or adaptive")
    return name, (strategy or DEFAULT_STRATEGY.get(name, "tight"))


def _test_arrays(dataset, n: Optional[int], seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    x, y = dataset.x_test, dataset.y_test
    if n is not None and n < x.shape[0]:
        idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=int(n), replace=False))
        x, y = x[idx], y[idx]
    return dataset.normalize(x), y


def _batches(n: int, size: int) -> Iterable[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def pgd_attack(module, x, y, lower, upper, steps: int = 200, restarts: int = 10, step_size=None,
               generator=None):
    """l_inf PGD on a torch classifier.  ``x``/``lower``/``upper`` ``(B, *shape)`` tensors,
    ``y`` ``(B,)``.  Returns ``(broken (B,) bool, x_adv (B, *shape))``: ``x_adv`` is the first
    misclassified point found (``x`` itself when clean-misclassified or never broken)."""
    import torch
    import torch.nn.functional as F

    if step_size is None:
        step_size = 2.5 * (upper - lower).amax(dim=0, keepdim=True) / 2 / max(steps, 1)
    with torch.no_grad():
        broken = module(x).reshape(x.shape[0], -1).argmax(1) != y
    x_adv = x.clone()
    for _ in range(restarts):
        idx = (~broken).nonzero().reshape(-1)
        if idx.numel() == 0 or steps <= 0:
            break
        ys, lo, hi = y[idx], lower[idx], upper[idx]
        xa = lo + (hi - lo) * torch.rand(lo.shape, generator=generator, dtype=lo.dtype, device=lo.device)
        found = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        best = xa.clone()
        for step in range(steps + 1):
            xa = xa.detach().requires_grad_(True)
            logits = module(xa).reshape(xa.shape[0], -1)
            wrong = (logits.argmax(1) != ys) & ~found
            if wrong.any():
                best[wrong] = xa.detach()[wrong]
                found |= wrong
            if step == steps or bool(found.all()):
                break
            loss = F.cross_entropy(logits, ys, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xa)
            xa = torch.maximum(torch.minimum(xa.detach() + step_size * grad.sign(), hi), lo)
        hit = idx[found]
        broken[hit] = True
        x_adv[hit] = best[found]
    return broken, x_adv


def evaluate_onnx(model, dataset, eps: float, methods: Sequence[str] = ("ibp", "crown-lbp"), pgd: bool = True,
                  pgd_steps: int = 200, pgd_restarts: int = 10, n_test: Optional[int] = None,
                  batch_size: int = 256, seed: int = 0, progress: bool = False) -> Dict:
    """Errors of the ONNX ``model`` (path or ``ModelProto``) on ``dataset``'s test split at raw
    radius ``eps``.  Returns a dict: ``n``, ``eps``, ``clean_err``, ``pgd_err`` (None when
    ``pgd`` is off), ``verified_err`` ``{method: err or None}`` (None = unavailable in this
    onnxverify), ``unavailable`` (list), ``strategies``, ``time_s`` per part.  Errors are
    fractions in [0, 1]."""
    import onnx

    from onnxverify import Box, load, margin_spec
    from onnxverify.network import Network
    from onnxverify.onnx.importer import import_model
    from onnxverify.onnx.reference import OrtModel
    from .tied import available_methods

    if isinstance(model, onnx.ModelProto):
        proto, path = model, None
        net = Network(import_model(proto), None, proto)
    else:
        path = str(model)
        net = load(path)
        proto = net.model
    ort = OrtModel(proto)
    x, y = _test_arrays(dataset, n_test, seed)
    n = x.shape[0]
    n_classes = net.n_outputs
    out: Dict = {"n": int(n), "eps": float(eps), "clean_err": None, "pgd_err": None, "verified_err": {},
                 "strategies": {}, "unavailable": [], "time_s": {}}
    bar = _bar(progress, "evaluate", n * (1 + (1 if pgd else 0) + len(methods)))

    t0 = time.perf_counter()
    pred = np.concatenate([ort(x[s]).reshape(s.stop - s.start, -1).argmax(1) for s in _batches(n, batch_size)])
    clean_wrong = pred != y
    out["clean_err"] = float(clean_wrong.mean()) if n else 0.0
    out["time_s"]["clean"] = time.perf_counter() - t0
    bar.update(n)

    lower, upper = dataset.input_box(x, eps)
    if pgd:
        t0 = time.perf_counter()
        broken = _pgd_onnx(proto, ort, x, y, lower, upper, clean_wrong, pgd_steps, pgd_restarts, batch_size, seed, bar)
        out["pgd_err"] = float(broken.mean()) if n else 0.0
        out["time_s"]["pgd"] = time.perf_counter() - t0

    have = available_methods()
    methods = [m for m in methods if parse_method(m)]  # validate all names before any work
    for spec in methods:
        name, strategy = parse_method(spec)
        key = spec.strip().lower()
        if name not in have and not (name.startswith("relaxed-crown-") and "relaxed-crown-V" in have):
            out["verified_err"][key] = None
            out["unavailable"].append(key)
            bar.update(n)
            continue
        t0 = time.perf_counter()
        verified = np.zeros(n, dtype=bool)
        for s in _batches(n, batch_size):
            C = margin_spec(y[s], n_classes)
            b = net.bounds(Box(lower[s], upper[s]), method=name, spec=C, strategy=strategy)
            verified[s] = (np.asarray(b.lower).reshape(s.stop - s.start, -1) > 0).all(axis=1)
            bar.update(s.stop - s.start)
        out["verified_err"][key] = float(1.0 - verified.mean()) if n else 0.0
        out["strategies"][key] = strategy
        out["time_s"][key] = time.perf_counter() - t0
    bar.close()
    return out


def _pgd_onnx(proto, ort, x, y, lower, upper, clean_wrong, steps, restarts, batch_size, seed, bar) -> np.ndarray:
    import onnx2torch
    import torch

    from onnxverify.converters import paramramp_torch  # noqa: F401  (onnx2torch converter)

    module = onnx2torch.convert(proto).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    broken = clean_wrong.copy()
    for s in _batches(n, batch_size):
        todo = np.nonzero(~clean_wrong[s])[0] + s.start
        if todo.size:
            xb, yb = torch.from_numpy(x[todo]), torch.from_numpy(y[todo])
            lo, hi = torch.from_numpy(lower[todo]), torch.from_numpy(upper[todo])
            hit, x_adv = pgd_attack(module, xb, yb, lo, hi, steps, restarts, generator=gen)
            hit_idx = hit.numpy()
            if hit_idx.any():  # replay in onnxruntime: only confirmed points count
                xa = x_adv.numpy()[hit_idx]
                confirmed = ort(xa).reshape(xa.shape[0], -1).argmax(1) != y[todo][hit_idx]
                broken[todo[hit_idx]] = confirmed
        bar.update(s.stop - s.start)
    return broken


def evaluate_tied(net, dataset, eps: float, n_test: Optional[int] = None, batch_size: int = 256,
                  seed: int = 0, pgd_steps: int = 0, pgd_restarts: int = 1, statuses: bool = False) -> Dict:
    """Clean and IBP verified error of a :class:`~.tied.TrainableNetwork` (eval mode, current
    eta) on the test split, with the verifier's IBP run on torch.  Returns ``{"n", "eps",
    "clean_err", "ibp_err", "verified", "margin_min"}`` (``verified``: the per-example bool
    array; ``margin_min``: each example's smallest margin lower bound), plus ``pgd_err`` when
    ``pgd_steps > 0`` (PGD on the torch module, no onnxruntime replay: a training-time
    estimate) and ``status`` when ``statuses`` (:func:`status_fractions` of the IBP bounds)."""
    import torch

    x, y = _test_arrays(dataset, n_test, seed)
    n = x.shape[0]
    lower, upper = dataset.input_box(x, eps)
    was = net.module.training
    net.eval()
    wrong = np.zeros(n, dtype=bool)
    verified = np.zeros(n, dtype=bool)
    broken = np.zeros(n, dtype=bool)
    margin_min = np.zeros(n, dtype=np.float64)
    counts: Dict = {}
    dev = net.device
    gen = torch.Generator().manual_seed(int(seed) + 11)
    try:
        for s in _batches(n, batch_size):
            xb = torch.from_numpy(x[s]).to(dev)
            yb = torch.from_numpy(y[s]).to(dev)
            lo, hi = torch.from_numpy(lower[s]).to(dev), torch.from_numpy(upper[s]).to(dev)
            with torch.no_grad():
                wrong[s] = (net(xb).argmax(1) != yb).cpu().numpy()
                lb, env = net.margin_bounds(lo, hi, yb, keep_env=statuses)
                verified[s] = (lb > 0).all(dim=1).cpu().numpy()
                margin_min[s] = lb.amin(dim=1).double().cpu().numpy()
                if statuses:
                    _add_status_counts(counts, net, env)
            if pgd_steps > 0:
                hit, _ = pgd_attack(net.module, xb, yb, lo, hi, pgd_steps, pgd_restarts,
                                    generator=gen if dev.type == "cpu" else None)
                broken[s] = hit.cpu().numpy()
    finally:
        net.module.train(was)
    out = {"n": int(n), "eps": float(eps), "clean_err": float(wrong.mean()) if n else 0.0,
           "ibp_err": float(1.0 - verified.mean()) if n else 0.0, "verified": verified, "margin_min": margin_min}
    if pgd_steps > 0:
        out["pgd_err"] = float((broken | wrong).mean()) if n else 0.0
    if statuses:
        out["status"] = {layer: {k: v / max(c["_total"], 1) for k, v in c.items() if k != "_total"}
                         for layer, c in counts.items()}
    return out


RELU_STATUSES = ("dead", "unstable", "alive")
PARAMRAMP_STATUSES = ("left dead", "left unstable", "alive", "right unstable", "right dead", "unstable")


def status_codes(l, u, r=None):
    """Neuron statuses (PAPER_NOTES.md §1) of pre-activation bounds ``l``/``u`` (torch,
    ``(B, *shape)``): a tensor of indices into :data:`RELU_STATUSES` (``r`` None) or
    :data:`PARAMRAMP_STATUSES` (``r`` the bend points, broadcast against ``l``, clamped to
    ``>= 1e-4``).  Where two definitions meet the dead statuses win."""
    import torch

    if r is None:
        code = torch.ones_like(l, dtype=torch.int8)
        code[(l >= 0) & (u > 0)] = 2
        code[u <= 0] = 0
        return code
    r = r.clamp_min(1e-4)
    left_dead = u <= 0
    right_dead = (l >= r) & ~left_dead
    rest = ~(left_dead | right_dead)
    code = torch.full_like(l, 5, dtype=torch.int8)
    code[rest & (l < 0) & (u <= r)] = 1
    code[rest & (l >= 0) & (u <= r)] = 2
    code[rest & (l >= 0) & (u > r)] = 3
    code[left_dead] = 0
    code[right_dead] = 4
    return code


def _add_status_counts(counts: Dict, net, env) -> None:
    """Accumulate per-layer status counts ``{layer: {status: count, "_total": n}}`` from the
    IBP bounds ``env`` of the activations' inputs."""
    import torch

    for node in net.activation_nodes:
        if node.op not in ("Relu", "LeakyRelu", "ParamRamp"):
            continue
        l, u = env[node.inputs[0]]
        names = PARAMRAMP_STATUSES if node.op == "ParamRamp" else RELU_STATUSES
        r = None
        if node.op == "ParamRamp":
            r = torch.as_tensor(node.params["r"]).to(l.device, l.dtype)
        code = status_codes(l, u, r)
        c = counts.setdefault(node.name, {"_total": 0})
        c["_total"] += int(code.numel())
        for k, name in enumerate(names):
            c[name] = c.get(name, 0) + int((code == k).sum())


class _NoBar:
    def update(self, k):
        pass

    def close(self):
        pass


def _bar(progress: bool, desc: str, total: int):
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", leave=False)
