"""Evaluation of a classifier stored as ONNX: clean, PGD and verified error (PAPER_NOTES.md §4).

:func:`evaluate_onnx` evaluates *the file a user ships*, in labelled phases:

1. ``clean`` -- onnxruntime, batched;
2. ``ibp`` -- onnxverify's IBP on the file (NumPy backend), batched;
3. ``pgd`` -- l_inf PGD (sign steps on the cross-entropy, ``steps`` steps of size
   ``2.5 eps / steps``, ``restarts`` random starts; broken if misclassified clean or any
   restart, at any step, finds a misclassified point) on the file converted with
   onnx2torch; every adversarial point is replayed in onnxruntime and only those
   onnxruntime misclassifies count;
4. every other method of ``methods`` (``crown-lbp`` with the tight strategy by default;
   ``METHOD:STRATEGY`` picks another), batched, optionally on a random sample
   (``method_samples``).

With ``skip_decided`` (the default) each phase only runs on the images the earlier phases left
undecided, which gives the same numbers as running every phase on every image, for a sound
verifier, in a fraction of the time: an image misclassified clean is neither verified nor
needs an attack; an image IBP verifies cannot be broken by PGD and is verified by every
linear method (their output bounds are intersected with IBP's); an image PGD breaks cannot be
verified.  ``skip_decided=False`` runs everything on everything (a cross-check of soundness:
tests assert PGD error <= verified error then).

:func:`estimate_evaluation` times each phase on a few images and prints a plan before any
long work starts (worst case: no image decided early).

Inputs: a model exported with the normalisation folded in (metadata ``onnxverify.input_space
= raw``) takes raw pixels in the data range and the box is ``[x - eps, x + eps]`` clamped to
it; otherwise (``normalized``, and files without the key) inputs are ``(x - mean) / std`` and
the box is :meth:`Dataset.input_box` (eps divided by std, clamped to the normalised range).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .attacks import pgd_attack
from .monitor import _batches, evaluate_tied  # noqa: F401  (re-exported)

__all__ = ["DEFAULT_STRATEGY", "parse_method", "evaluate_onnx", "evaluate_tied", "pgd_attack",
           "estimate_evaluation", "format_estimate", "model_input_space", "model_inputs", "format_duration"]

#: strategy used for each verification method unless ``METHOD:STRATEGY`` says otherwise
DEFAULT_STRATEGY = {"ibp": None, "crown-lbp": "tight", "crown-ibp": "tight", "lbp": "tight", "crown": "tight"}
#: test images per call of a linear bound method (their maps are large on conv nets)
LINEAR_BATCH = 8


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


def format_duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def model_input_space(proto) -> str:
    """``"raw"`` when the file has its input normalisation folded in, else ``"normalized"``."""
    meta = {p.key: p.value for p in proto.metadata_props}
    return "raw" if meta.get("onnxverify.input_space") == "raw" else "normalized"


def model_inputs(dataset, x_raw: np.ndarray, eps: float, space: str):
    """``(x, lower, upper)`` in the model's input space for raw test images ``x_raw``."""
    if space == "raw":
        lo, hi = dataset.data_range
        x = np.asarray(x_raw, dtype=np.float32)
        return x, np.clip(x - eps, lo, hi).astype(np.float32), np.clip(x + eps, lo, hi).astype(np.float32)
    x = dataset.normalize(x_raw)
    lower, upper = dataset.input_box(x, eps)
    return x, lower, upper


def _check_shapes(net, dataset) -> None:
    want, got = tuple(net.graph.input_shape), tuple(dataset.input_shape)
    if int(np.prod(want)) != int(np.prod(got)) or (len(want) == len(got) and want != got):
        raise ValueError(f"the model takes inputs of shape {want} but data set {dataset.name} has images of shape "
                         f"{got}: evaluate it on the data set it was trained on (see its model card), or train a "
                         f"model for {dataset.name} (onnxverify model ... --input-shape {','.join(map(str, got))})")
    if net.n_outputs < dataset.num_classes:
        raise ValueError(f"the model has {net.n_outputs} outputs but data set {dataset.name} has "
                         f"{dataset.num_classes} classes")


def _open(model):
    import onnx

    from onnxverify import load
    from onnxverify.network import Network
    from onnxverify.onnx.importer import import_model

    if isinstance(model, onnx.ModelProto):
        return Network(import_model(model), None, model)
    return load(str(model))


def _sample(n: int, k: Optional[int], seed: int) -> np.ndarray:
    """Boolean mask of a seeded random sample of ``k`` of ``n`` items (all when None)."""
    mask = np.zeros(n, dtype=bool)
    if k is None or k >= n:
        mask[:] = True
    else:
        mask[np.random.default_rng([seed, 5]).choice(n, size=int(k), replace=False)] = True
    return mask


def _verify(net, x_lo, x_hi, y, idx, name, strategy, batch, bar) -> np.ndarray:
    """Verified flags (all margins' lower bounds > 0) of the images ``idx``."""
    from onnxverify import Box, margin_spec

    out = np.zeros(idx.size, dtype=bool)
    for s in _batches(idx.size, batch):
        sel = idx[s]
        b = net.bounds(Box(x_lo[sel], x_hi[sel]), method=name, spec=margin_spec(y[sel], net.n_outputs),
                       strategy=strategy)
        out[s] = (np.asarray(b.lower).reshape(sel.size, -1) > 0).all(axis=1)
        bar.update(sel.size)
    return out


def evaluate_onnx(model, dataset, eps: float, methods: Sequence[str] = ("ibp", "crown-lbp"), pgd: bool = True,
                  pgd_steps: int = 200, pgd_restarts: int = 10, n_test: Optional[int] = None,
                  batch_size: int = 256, seed: int = 0, progress: bool = False,
                  method_samples: Optional[Dict[str, int]] = None, skip_decided: bool = True,
                  echo: Optional[Callable[[str], None]] = None) -> Dict:
    """Errors of the ONNX ``model`` (path or ``ModelProto``) on ``dataset``'s test split
    (``n_test``: a seeded random subset) at raw radius ``eps``; see the module docstring.

    ``method_samples``: ``{method: k}`` runs that method on a seeded random sample of ``k`` of
    the test images (its error is over the sample).  Returns a dict: ``n``, ``eps``,
    ``clean_err``, ``pgd_err`` (None when ``pgd`` is off), ``verified_err`` ``{method: err or
    None}`` (None = unavailable in this onnxverify), ``n_by_method``, ``unavailable``,
    ``strategies``, ``time_s`` per phase, ``ran`` (images each phase actually ran on),
    ``input_space``, and ``ibp_err_on_sample`` ``{method: IBP's error on that method's sample}``
    for sampled methods.  Errors are fractions in [0, 1]."""
    from onnxverify.onnx.reference import OrtModel

    from .tied import available_methods

    say = echo or (lambda s: None)
    keys = [str(m).strip().lower() for m in methods]
    parsed = {k: parse_method(k) for k in keys}  # validate all names before any work
    net = _open(model)
    proto = net.model
    _check_shapes(net, dataset)
    space = model_input_space(proto)
    x_raw, y = dataset.x_test, dataset.y_test
    if n_test is not None and n_test < x_raw.shape[0]:
        idx = np.sort(np.random.default_rng(seed).choice(x_raw.shape[0], size=int(n_test), replace=False))
        x_raw, y = x_raw[idx], y[idx]
    x, lower, upper = model_inputs(dataset, x_raw, eps, space)
    n = int(x.shape[0])
    out: Dict = {"n": n, "eps": float(eps), "clean_err": None, "pgd_err": None, "verified_err": {},
                 "n_by_method": {}, "strategies": {}, "unavailable": [], "time_s": {}, "ran": {},
                 "input_space": space, "skip_decided": bool(skip_decided)}
    ort = OrtModel(proto)

    t0 = time.perf_counter()
    bar = _bar(progress, f"eps {eps:g} clean", n)
    preds = []
    for s in _batches(n, batch_size):
        preds.append(ort(x[s]).reshape(s.stop - s.start, -1).argmax(1))
        bar.update(s.stop - s.start)
    bar.close()
    clean_wrong = (np.concatenate(preds) if preds else np.zeros(0, int)) != y
    out["clean_err"] = float(clean_wrong.mean()) if n else 0.0
    out["time_s"]["clean"], out["ran"]["clean"] = time.perf_counter() - t0, n

    have = available_methods()
    t0 = time.perf_counter()
    todo = np.nonzero(~clean_wrong)[0] if skip_decided else np.arange(n)
    bar = _bar(progress, f"eps {eps:g} ibp", todo.size)
    ibp_ok = np.zeros(n, dtype=bool)
    ibp_ok[todo] = _verify(net, lower, upper, y, todo, "ibp", None, batch_size, bar)
    bar.close()
    out["time_s"]["ibp"], out["ran"]["ibp"] = time.perf_counter() - t0, int(todo.size)
    if "ibp" in parsed:
        out["verified_err"]["ibp"] = float(1.0 - ibp_ok.mean()) if n else 0.0
        out["n_by_method"]["ibp"], out["strategies"]["ibp"] = n, None
    say(f"eps {eps:g}: clean error {100 * out['clean_err']:.2f}%, IBP verifies {int(ibp_ok.sum())} of {n}")

    broken = clean_wrong.copy()
    if pgd:
        t0 = time.perf_counter()
        todo = np.nonzero(~clean_wrong & ~ibp_ok)[0] if skip_decided else np.nonzero(~clean_wrong)[0]
        say(f"eps {eps:g}: PGD {pgd_steps}x{pgd_restarts} on {todo.size} images")
        bar = _bar(progress, f"eps {eps:g} PGD {pgd_steps}x{pgd_restarts}", todo.size)
        broken |= _pgd_onnx(proto, ort, x, y, lower, upper, todo, pgd_steps, pgd_restarts, batch_size, seed, bar)
        bar.close()
        out["pgd_err"] = float(broken.mean()) if n else 0.0
        out["time_s"]["pgd"], out["ran"]["pgd"] = time.perf_counter() - t0, int(todo.size)

    for key, (name, strategy) in parsed.items():
        if name == "ibp":
            continue
        if name not in have and not (name.startswith("relaxed-crown-") and "relaxed-crown-V" in have):
            out["verified_err"][key] = None
            out["unavailable"].append(key)
            continue
        t0 = time.perf_counter()
        sample = _sample(n, (method_samples or {}).get(key), seed)
        undecided = (sample & ~clean_wrong & ~ibp_ok & ~broken) if skip_decided else sample
        todo = np.nonzero(undecided)[0]
        say(f"eps {eps:g}: {key} on {todo.size} images (of a sample of {int(sample.sum())})")
        bar = _bar(progress, f"eps {eps:g} {key}", todo.size)
        ok = ibp_ok.copy() if skip_decided else np.zeros(n, dtype=bool)
        ok[todo] = _verify(net, lower, upper, y, todo, name, strategy, LINEAR_BATCH, bar)
        bar.close()
        k = int(sample.sum())
        out["verified_err"][key] = float(1.0 - ok[sample].mean()) if k else 0.0
        out["n_by_method"][key], out["strategies"][key] = k, strategy
        if k < n:  # IBP on the same sample, for a like-for-like comparison
            out.setdefault("ibp_err_on_sample", {})[key] = float(1.0 - ibp_ok[sample].mean()) if k else 0.0
        out["time_s"][key], out["ran"][key] = time.perf_counter() - t0, int(todo.size)
    return out


def _pgd_onnx(proto, ort, x, y, lower, upper, todo, steps, restarts, batch_size, seed, bar) -> np.ndarray:
    """Broken flags ``(n,)``: images of ``todo`` whose PGD point onnxruntime misclassifies."""
    import torch

    broken = np.zeros(x.shape[0], dtype=bool)
    if todo.size == 0 or steps <= 0 or restarts <= 0:
        bar.update(todo.size)
        return broken
    module = _torch_module(proto)
    gen = torch.Generator().manual_seed(int(seed))
    for s in _batches(todo.size, batch_size):
        sel = todo[s]
        xb, yb = torch.from_numpy(x[sel]), torch.from_numpy(y[sel])
        lo, hi = torch.from_numpy(lower[sel]), torch.from_numpy(upper[sel])
        hit, x_adv = pgd_attack(module, xb, yb, lo, hi, steps, restarts, generator=gen)
        hit = hit.numpy()
        if hit.any():  # replay in onnxruntime: only confirmed points count
            xa = x_adv.numpy()[hit]
            broken[sel[hit]] = ort(xa).reshape(xa.shape[0], -1).argmax(1) != y[sel][hit]
        bar.update(sel.size)
    return broken


def _torch_module(proto):
    import onnx2torch

    from onnxverify.converters import paramramp_torch  # noqa: F401  (onnx2torch converter)

    module = onnx2torch.convert(proto).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def estimate_evaluation(model, dataset, eps_list: Sequence[float], methods: Sequence[str], pgd: bool,
                        pgd_steps: int, pgd_restarts: int, n_test: Optional[int] = None,
                        method_samples: Optional[Dict[str, int]] = None, probe: int = 2,
                        batch_size: int = 256) -> Dict:
    """Time each phase on ``probe`` test images and extrapolate to the whole evaluation.

    Returns ``{"n", "phases": [(label, images, seconds per image, worst-case seconds)],
    "total_s"}`` -- worst case: every phase on every image, i.e. nothing decided early (with
    ``skip_decided`` a well-trained model usually needs a fraction of it)."""
    from onnxverify.onnx.reference import OrtModel

    from .tied import available_methods

    net = _open(model)
    _check_shapes(net, dataset)
    space = model_input_space(net.model)
    n = dataset.x_test.shape[0] if n_test is None else min(int(n_test), dataset.x_test.shape[0])
    cheap = max(1, min(32, n))  # images for timing the cheap phases (each timed twice, the second counts)
    x, lo, hi = model_inputs(dataset, dataset.x_test[:cheap], float(eps_list[0]) if eps_list else 0.0, space)
    y = dataset.y_test[:cheap]

    def timed(fn, k):
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) / k

    phases = []
    ort = OrtModel(net.model)
    phases.append(("clean (onnxruntime)", n, timed(lambda: ort(x), cheap)))
    idx = np.arange(cheap)
    phases.append(("ibp (onnxverify)", n, timed(lambda: _verify(net, lo, hi, y, idx, "ibp", None, batch_size, _NoBar()),
                                              cheap)))
    if pgd:
        import torch
        import torch.nn.functional as F

        module = _torch_module(net.model)
        xb, yb = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            xa = xb.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(module(xa).reshape(cheap, -1), yb), xa)

        phases.append((f"PGD {pgd_steps}x{pgd_restarts}", n, timed(step, cheap) * pgd_steps * pgd_restarts))
    have = available_methods()
    k = max(1, min(probe, n))
    for spec in methods:
        name, strategy = parse_method(spec)
        if name == "ibp" or name not in have:
            continue
        m = min(n, (method_samples or {}).get(spec, n))
        t0 = time.perf_counter()
        _verify(net, lo, hi, y, np.arange(k), name, strategy, LINEAR_BATCH, _NoBar())
        phases.append((f"{spec} (onnxverify)", m, (time.perf_counter() - t0) / k))
    rows = [(label, m, per, per * m) for label, m, per in phases]
    rows = [(label, m, per, total * max(1, len(eps_list))) for label, m, per, total in rows]
    return {"n": n, "eps": list(eps_list), "phases": rows, "total_s": sum(r[3] for r in rows)}


def format_estimate(est: Dict) -> str:
    """A few lines: the evaluation plan with worst-case times per phase."""
    eps = ", ".join(f"{e:g}" for e in est["eps"])
    lines = [f"final evaluation at eps {eps} on {est['n']} test images, worst case (nothing decided early) "
             f"about {format_duration(est['total_s'])}:"]
    for label, m, per, total in est["phases"]:
        lines.append(f"  {label:<26} {m:>6} images x {len(est['eps'])} eps, {per * 1e3:8.1f} ms/image  "
                     f"<= {format_duration(total)}")
    lines.append("  (PGD and the linear methods only run on the images the cheaper phases leave undecided; "
                 "shorten with --n-test, --methods ibp, --no-pgd or --no-eval)")
    return "\n".join(lines)


class _NoBar:
    def update(self, k):
        pass

    def close(self):
        pass


def _bar(progress: bool, desc: str, total: int):
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False)
