"""VNN-LIB verdicts: ``sat`` / ``unsat`` / ``unknown`` / ``timeout`` / ``error``.

:func:`verify` answers one property on one network within a time limit:

* ``unsat`` only when every output disjunct of every input case is proved infeasible: a
  disjunct ``A y <= b`` is infeasible on a box when some row has a sound lower bound
  ``(A y)_k > b_k`` (all open rows of a case go to the bound engine as one spec matrix);
* ``sat`` only with an input that onnxruntime confirms lands in the unsafe set;
* ``unknown`` when every step ran and none decided; ``timeout`` when the budget ran out.

The steps are a cascade from cheap to tight (:data:`DEFAULT_CASCADE`, filtered by what
:data:`onnxverify.bounds.METHODS` offers) with attacks interleaved, then input bisection
(branch and bound over the input box) for networks with few free inputs, or a last long
attack otherwise. The time limit is checked between steps and enforced inside long steps
by a SIGALRM guard (main thread only); the VNN-COMP runner's worker process is the final
guard.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from .errors import InputError, MemoryLimitError, OnnxVerifyError
from .input_sets import Box

__all__ = ["Result", "verify", "DEFAULT_CASCADE", "parse_methods", "available_cascade", "VERDICTS"]

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")

#: (method, strategy) from cheap to tight; entries the bound engine lacks are skipped.
DEFAULT_CASCADE = (("ibp", None), ("crown-ibp", "adaptive"), ("crown-lbp", "adaptive"), ("crown", "adaptive"))

#: Above this many inputs, bounds are computed in float32 (with a relative proof margin)
#: and the default cascade drops the methods built on forward linear maps (lbp, crown-lbp,
#: relaxed-crown-V), whose cost grows with the input size while crown is tighter.
LARGE_INPUT = 1024


def _forward_map_method(m: str) -> bool:
    return m in ("lbp", "crown-lbp") or m.startswith("relaxed-crown")


@dataclass
class Result:
    """``verdict`` in :data:`VERDICTS`; ``counterexample`` ``(x_flat (n_in,), y_flat (n_out,))``
    (float64; ``y`` from onnxruntime at ``x``) for ``sat``, else None; ``time`` in seconds
    (loading included); ``log``: one dict per step (``step``, ``time``, ...)."""

    verdict: str
    counterexample: tuple | None = None
    time: float = 0.0
    log: list = field(default_factory=list)
    message: str = ""

    def summary(self) -> str:
        return f"{self.verdict} ({self.time:.2f} s){': ' + self.message if self.message else ''}"


class _TimeUp(BaseException):
    """Raised when the budget is spent (BaseException: ``except Exception`` won't swallow it)."""


class _Decided(Exception):
    def __init__(self, verdict):
        self.verdict = verdict


def parse_methods(spec) -> list:
    """``"ibp,crown:adaptive"`` or a list of names / (method, strategy) -> [(method, strategy)]."""
    if spec is None:
        return list(DEFAULT_CASCADE)
    items = [s for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out = []
    for it in items:
        if isinstance(it, (tuple, list)):
            m, s = it
        else:
            m, _, s = str(it).strip().partition(":")
            s = s or None
        if not m:
            continue
        out.append((m.strip().lower(), s.strip().lower() if s else None))
    if not out:
        raise InputError(f"no bound methods in {spec!r}")
    return out


def available_cascade(cascade) -> tuple:
    """``(usable, missing)``: the entries whose method the bound engine offers, and the rest."""
    from .bounds import METHODS, STRATEGIES

    def offered(m):
        if m in METHODS:
            return True
        for template in METHODS:  # e.g. relaxed-crown-V -> relaxed-crown-2
            head, _, tail = template.lower().rpartition("-")
            if tail == "v" and m.startswith(head + "-") and m[len(head) + 1:].isdigit() and int(m[len(head) + 1:]) >= 1:
                return True
        return False

    usable, missing = [], []
    for m, s in cascade:
        if offered(m) and (s is None or s in STRATEGIES):
            usable.append((m, s))
        else:
            missing.append((m, s))
    return usable, missing


@contextmanager
def _alarm(deadline: float):
    """Raise :class:`_TimeUp` in the main thread at ``deadline`` (time.monotonic)."""
    if not np.isfinite(deadline) or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise _TimeUp()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _CaseState:
    """One input case: its box, its output rows, and which disjuncts are still open."""

    def __init__(self, case, n_out):
        self.case = case
        ds = case.y_disjuncts
        self.trivial = any(np.asarray(A).shape[0] == 0 for A, _ in ds)  # no output condition
        sizes = [np.asarray(A).shape[0] for A, _ in ds]
        self.R = np.concatenate([np.asarray(A, dtype=np.float64).reshape(-1, n_out) for A, _ in ds]) \
            if ds else np.zeros((0, n_out))
        self.b = np.concatenate([np.asarray(b, dtype=np.float64).ravel() for _, b in ds]) if ds else np.zeros(0)
        self.owner = np.repeat(np.arange(len(ds)), sizes)
        self.open = np.ones(len(ds), dtype=bool)

    @property
    def done(self):
        return not self.trivial and not self.open.any()

    def objective(self, n_out):
        from .attack import CaseObjective

        return CaseObjective([self.case.y_disjuncts[d] for d in np.flatnonzero(self.open)], n_out)


class _Solver:
    def __init__(self, net, ort, prop, t0, timeout, cascade, seed, split, max_split_dims, log_fn, max_memory=None):
        from .attack import Confirmer

        self.net, self.ort, self.prop = net, ort, prop
        self.t0, self.timeout = t0, timeout
        # steps stop at ``deadline``; the alarm (see verify) fires a little later
        self.margin = min(0.25, 0.05 * timeout) if timeout is not None else 0.0
        self.deadline = t0 + timeout - self.margin if timeout is not None else np.inf
        self.cascade, self.split, self.max_split_dims = cascade, split, max_split_dims
        self.rng = np.random.default_rng(seed)
        self.log, self.log_fn = [], log_fn
        n_out = prop.n_outputs
        self.n_out = n_out
        self.cases = [_CaseState(c, n_out) for c in prop.cases]
        self.confirm = Confirmer(ort, prop, net.input_shape if net is not None else prop_input_shape(ort, prop))
        self.best_method = None  # the tightest method that ran on every open case
        self.ran_ok = []
        self.gradient_ok = net is not None
        self.max_memory = max_memory

    # ---- bookkeeping ------------------------------------------------------------
    def remaining(self):
        return self.deadline - time.monotonic()

    def check_time(self):
        if time.monotonic() >= self.deadline:
            raise _TimeUp()

    def note(self, step, t_start, **info):
        entry = {"step": step, "time": round(time.monotonic() - t_start, 4),
                 "elapsed": round(time.monotonic() - self.t0, 3), **info}
        self.log.append(entry)
        if self.log_fn:
            self.log_fn(entry)

    def open_cases(self):
        return [cs for cs in self.cases if not cs.done]

    def n_open(self):
        return int(sum(cs.open.sum() for cs in self.cases if not cs.done))

    # ---- attacks ----------------------------------------------------------------
    def trivial_cases(self):
        for cs in self.cases:
            if cs.trivial:
                c = cs.case
                xs = np.stack([(c.x_lower + c.x_upper) / 2, c.x_lower, c.x_upper])
                if self.confirm(xs, c):
                    raise _Decided("sat")

    def attack(self, name, budget, n_samples, restarts, steps):
        """Sampling then PGD on every open case, within ``budget`` seconds."""
        from .attack import GradientUnavailable, forward_flat, pgd_attack, sample_attack

        t = time.monotonic()
        stop = min(self.deadline, t + budget)
        open_cases = [cs for cs in self.open_cases() if not cs.trivial]
        for i, cs in enumerate(open_cases):
            case_stop = t + (stop - t) * (i + 1) / len(open_cases)
            obj = cs.objective(self.n_out)
            fwd = partial(forward_flat, self.net.graph) if self.net is not None else self._ort_forward
            found, best = sample_attack(fwd, cs.case, obj, self.confirm, self.rng, n_samples,
                                        min(case_stop, time.monotonic() + 0.4 * (case_stop - time.monotonic())))
            if not found and self.gradient_ok and restarts:
                try:
                    found = pgd_attack(self.net.graph, cs.case, obj, self.confirm, self.rng, restarts, steps,
                                       case_stop, starts=best)
                except GradientUnavailable as e:
                    self.gradient_ok = False
                    self.note(name, t, note=f"gradient unavailable: {e}")
            if found:
                self.note(name, t, result="counterexample", checked=self.confirm.n_checked)
                raise _Decided("sat")
        self.check_time()
        self.note(name, t, result="none", checked=self.confirm.n_checked, rejected=self.confirm.n_rejected)

    def _ort_forward(self, x):
        shape = prop_input_shape(self.ort, self.prop)
        return np.asarray(self.ort(x.astype(np.float32).reshape((len(x),) + shape))).reshape(len(x), -1)

    # ---- bounds -----------------------------------------------------------------
    def bounds(self, lo, hi, spec, method, strategy):
        """Lower bounds ``(N, K)`` of ``spec @ y`` over boxes ``lo, hi (N, n_in)`` and the
        tolerance a proof must beat (float64 first; float32 if that does not fit)."""
        shape = (lo.shape[0],) + tuple(self.net.input_shape)
        box = Box(lo.reshape(shape), hi.reshape(shape))
        dtypes = (np.float32,) if self.prop.n_inputs > LARGE_INPUT else (np.float64, np.float32)
        for i, dtype in enumerate(dtypes):
            try:
                b = self.net.bounds(box, method=method, spec=spec, strategy=strategy, dtype=dtype,
                                    max_memory=self.max_memory)
                break
            except (MemoryLimitError, MemoryError):
                if i == len(dtypes) - 1:
                    raise
        # float32 rounding: a proof must clear b by a small relative margin
        tol = 1e-9 if dtype == np.float64 else 1e-4
        lower = np.asarray(b.lower, dtype=np.float64).reshape(lo.shape[0], -1)
        return lower, tol

    def proved(self, lower, tol, b, owner, n_disjuncts):
        """``(N, D)``: disjuncts shown infeasible (some row's lower bound exceeds its b)."""
        rows = lower > b[None, :] + tol * (1 + np.abs(b[None, :]) + np.abs(lower))
        onehot = np.zeros((len(owner), n_disjuncts))
        onehot[np.arange(len(owner)), owner] = 1
        return (rows.astype(np.float64) @ onehot) > 0

    def bound_step(self, method, strategy, extra=False):
        """Bound every open case with one method; ``extra``: a retry with another strategy
        (does not change the method the bisection uses)."""
        t = time.monotonic()
        name = method + (f":{strategy}" if strategy else "")
        for cs in self.open_cases():
            if cs.trivial:
                continue
            self.check_time()
            rows = cs.open[cs.owner]
            try:
                lower, tol = self.bounds(cs.case.x_lower[None], cs.case.x_upper[None], cs.R[rows], method, strategy)
            except (MemoryLimitError, MemoryError) as e:
                self.note(name, t, result="skipped", note=f"memory: {str(e)[:200]}")
                return
            except OnnxVerifyError as e:
                self.note(name, t, result="skipped", note=str(e)[:200])
                return
            except Exception as e:  # a bug in one method must not stop the others
                self.note(name, t, result="failed", note=f"{type(e).__name__}: {str(e)[:200]}")
                return
            owner = cs.owner[rows]
            newly = self.proved(lower, tol, cs.b[rows], owner, len(cs.open))[0]
            cs.open &= ~newly
        if not extra:
            self.best_method = (method, strategy)
            self.ran_ok.append((method, strategy))
        self.note(name, t, result="bounds", open_disjuncts=self.n_open())
        if not self.open_cases():
            raise _Decided("unsat")

    # ---- input bisection --------------------------------------------------------
    def split_applicable(self):
        if self.net is None or not self.split or self.best_method is None:
            return False
        return all(not cs.trivial and 0 < int((cs.case.x_upper > cs.case.x_lower).sum()) <= self.max_split_dims
                   for cs in self.open_cases())

    def branch_and_bound(self, max_boxes=1_000_000):
        """Bisect the input boxes of the open cases until every box is proved (unsat), a box
        centre is a confirmed counterexample (sat), or time / memory runs out."""
        t = time.monotonic()
        tiers = self.bab_tiers()
        method = "+".join(m for m, _ in tiers)
        stats = {"bounded": 0, "expanded": 0, "rounds": 0, "queue": 0, "proved_volume": 0.0}
        try:
            for cs in self.open_cases():
                if not self._bab_case(cs, tiers, max_boxes, stats):
                    self.note("split", t, result="gave up", method=method, **stats)
                    return
        except _TimeUp:
            self.note("split", t, result="timeout", method=method, **stats)
            raise
        self.note("split", t, result="proved", method=method, **stats)
        raise _Decided("unsat")

    def _bound_boxes(self, cs, lo, hi, parent_open, method, strategy, state):
        """Bound boxes ``(N, n_in)`` on the rows of their open disjuncts. Returns ``(open
        (N, D), score (N,), target (N,))``: disjuncts still open, the smallest shortfall
        ``max_row (lower - b)`` over open disjuncts (``inf`` when proved) and that disjunct.
        Calls are chunked to ``state['batch']`` boxes, which adapts to the call time."""
        D = len(cs.open)
        rows = parent_open.any(axis=0)[cs.owner]
        R, b, owner = cs.R[rows], cs.b[rows], cs.owner[rows]
        out_open, out_score, out_target = [], [], []
        i = 0
        while i < len(lo):
            self.check_time()
            n = state["batch"]
            ts = time.monotonic()
            try:
                lower, tol = self.bounds(lo[i:i + n], hi[i:i + n], R, method, strategy)
            except (MemoryLimitError, MemoryError):
                if n == 1:
                    raise
                state["batch"] = max(1, n // 2)
                continue
            dt = time.monotonic() - ts
            if dt < 0.1 and n < 8192 and len(lo) - i > n:
                state["batch"] = n * 2
            elif dt > 1.0 and n > 8:
                state["batch"] = n // 2
            op = parent_open[i:i + n] & ~self.proved(lower, tol, b, owner, D)
            short = np.full(op.shape, np.inf)
            diff = lower - b[None]
            for d in np.unique(owner):
                short[:, d] = diff[:, owner == d].max(axis=1)
            short[~op] = np.inf
            out_open.append(op)
            out_score.append(short.min(axis=1))
            out_target.append(np.argmin(short, axis=1))
            i += lower.shape[0]
        self.bab_stats["bounded"] += len(lo)
        return np.concatenate(out_open), np.concatenate(out_score), np.concatenate(out_target)

    def bab_tiers(self):
        """Bound methods of the bisection: a cheap one scores every candidate child, the
        tightest method that ran re-bounds the children that stay open."""
        ran = [ms for ms in self.cascade if ms in self.ran_ok]
        tight = self.best_method
        cheap = next((ms for ms in ran if ms[0] == "crown-ibp"), None) \
            or next((ms for ms in ran if ms[0] == "crown-lbp"), None) or tight
        return [cheap] if cheap == tight else [cheap, tight]

    def _bab_case(self, cs, tiers, max_boxes, stats, try_all_dims=8):
        from .attack import CaseObjective, GradientUnavailable, forward_flat, local_pgd, value_and_grad

        self.bab_stats = stats
        c = cs.case
        root_w = c.x_upper - c.x_lower
        free = np.flatnonzero(root_w > 0)
        exhaustive = len(free) <= try_all_dims
        objective = CaseObjective(c.y_disjuncts, self.n_out)
        tol_m = 1e-6 * (1.0 + float(np.abs(cs.b).max(initial=0.0)))
        state = {"batch": 8}
        proved_vol = stats["proved_volume"]
        lo_q, hi_q = c.x_lower[None].copy(), c.x_upper[None].copy()
        method, strategy = tiers[0]
        open_q, score, target = self._bound_boxes(cs, lo_q, hi_q, cs.open[None], *tiers[-1], state)
        keep = ~np.isinf(score)
        lo_q, hi_q, open_q, target_q, score_q = lo_q[keep], hi_q[keep], open_q[keep], target[keep], score[keep]
        depth_q = np.zeros(len(lo_q), dtype=np.int64)
        while len(lo_q):
            self.check_time()
            if len(lo_q) > max_boxes:
                return False
            stats["queue"] = len(lo_q)
            n = max(1, min(len(lo_q), state["batch"] // (2 * len(free) if exhaustive else 2)))
            # best first: the boxes furthest from a proof (most likely to hold a counterexample)
            if n < len(lo_q):
                idx = np.argpartition(score_q, n - 1)[:n]
                rest = np.ones(len(lo_q), dtype=bool)
                rest[idx] = False
            else:
                idx, rest = np.arange(len(lo_q)), np.zeros(len(lo_q), dtype=bool)
            idx = idx[np.argsort(score_q[idx])]
            lo, hi, op, tg, dp = lo_q[idx], hi_q[idx], open_q[idx], target_q[idx], depth_q[idx]
            lo_q, hi_q, open_q, target_q, depth_q, score_q = (lo_q[rest], hi_q[rest], open_q[rest], target_q[rest],
                                                             depth_q[rest], score_q[rest])
            stats["expanded"] += n
            stats["rounds"] = stats.get("rounds", 0) + 1
            centre = (lo + hi) / 2
            width = hi - lo
            g = None
            if not exhaustive and self.gradient_ok:
                try:
                    y, g = value_and_grad(self.net.graph, centre, lambda yy: objective.loss_grad(yy, tg)[1])
                except GradientUnavailable:
                    self.gradient_ok = False
            if g is None:
                y = forward_flat(self.net.graph, centre)
            m = objective.margins(y).min(axis=1)
            bad = m <= tol_m
            if bad.any() and self.confirm(centre[bad][np.argsort(m[bad])], c):
                raise _Decided("sat")
            if self.gradient_ok:  # a few PGD steps inside the worst boxes
                k_att = min(n, 64)
                try:
                    if local_pgd(self.net.graph, lo[:k_att], hi[:k_att], objective, tg[:k_att], 5, self.confirm, c):
                        raise _Decided("sat")
                except GradientUnavailable:
                    self.gradient_ok = False
            # candidate split dimensions per box: (n, k)
            if exhaustive:
                cand = np.broadcast_to(free, (n, len(free)))
            else:
                rel = np.full(width.shape, -1.0)
                rel[:, free] = width[:, free] / root_w[free]
                smear = np.full(width.shape, -1.0)
                if g is not None:
                    smear[:, free] = np.abs(g[:, free]) * width[:, free]
                use_rel = (dp % 2 == 1) | (smear.max(axis=1) <= 0)
                cand = np.where(use_rel, np.argmax(rel, axis=1), np.argmax(smear, axis=1))[:, None]
            k = cand.shape[1]
            rows_ = np.repeat(np.arange(n), k)
            dims = cand.reshape(-1)
            mid = (lo[rows_, dims] + hi[rows_, dims]) / 2
            lo_a, hi_a = lo[rows_].copy(), hi[rows_].copy()
            hi_a[np.arange(n * k), dims] = mid
            lo_b, hi_b = lo[rows_].copy(), hi[rows_].copy()
            lo_b[np.arange(n * k), dims] = mid
            ch_lo, ch_hi = np.concatenate([lo_a, lo_b]), np.concatenate([hi_a, hi_b])
            ch_open_parent = np.concatenate([op[rows_], op[rows_]])
            ch_open, ch_score, ch_target = self._bound_boxes(cs, ch_lo, ch_hi, ch_open_parent, method, strategy, state)
            # best dimension per box: the larger worst-child score
            both = np.minimum(ch_score[: n * k], ch_score[n * k:]).reshape(n, k)
            best = np.argmax(both, axis=1)
            pick = np.arange(n) * k + best
            sel = np.concatenate([pick, pick + n * k])
            ch_lo, ch_hi, ch_open, ch_score, ch_target = ch_lo[sel], ch_hi[sel], ch_open[sel], ch_score[sel], ch_target[sel]
            for m2, s2 in tiers[1:]:  # tighter bounds for the children that stay open
                todo = np.flatnonzero(~np.isinf(ch_score))
                if len(todo):
                    st2 = state.setdefault(m2, {"batch": 8})
                    o2, s2_, t2 = self._bound_boxes(cs, ch_lo[todo], ch_hi[todo], ch_open[todo], m2, s2, st2)
                    ch_open[todo], ch_score[todo], ch_target[todo] = o2, s2_, t2
            done = np.isinf(ch_score)
            vol = np.prod((ch_hi[:, free] - ch_lo[:, free]) / root_w[free], axis=1)
            proved_vol += float(vol[done].sum()) / len(self.cases)
            stats["proved_volume"] = round(proved_vol, 6)
            keep = ~done
            lo_q = np.concatenate([lo_q, ch_lo[keep]])
            hi_q = np.concatenate([hi_q, ch_hi[keep]])
            open_q = np.concatenate([open_q, ch_open[keep]])
            target_q = np.concatenate([target_q, ch_target[keep]])
            depth_q = np.concatenate([depth_q, np.concatenate([dp, dp])[keep] + 1])
            score_q = np.concatenate([score_q, ch_score[keep]])
        cs.open[:] = False
        return True


def prop_input_shape(ort, prop):
    shape = ort.session.get_inputs()[0].shape[1:]
    if all(isinstance(s, int) for s in shape) and int(np.prod(shape)) == prop.n_inputs:
        return tuple(shape)
    return (prop.n_inputs,)


def _load(model, prop):
    """(Network or None, OrtModel, Property, note): a model the IR cannot import still gets an
    onnxruntime session, so sampling can look for counterexamples."""
    from .errors import ModelError, UnsupportedOpError
    from .network import Network, load
    from .reference import OrtModel
    from .vnnlib import Property, parse_vnnlib

    note = ""
    if isinstance(model, Network):
        net = model
        ort = OrtModel(net.model if net.model is not None else net.path)
    else:
        path = os.fspath(model)
        if not os.path.exists(path):
            raise ModelError(f"model file not found: {path}")
        try:
            net = load(path)
        except UnsupportedOpError as e:
            net, note = None, str(e)
        try:
            ort = OrtModel(path)
        except Exception as e:
            raise ModelError(f"onnxruntime cannot run {path}: {str(e).splitlines()[0][:300]}") from None
    if isinstance(prop, Property):
        p = prop
    else:
        if not os.path.exists(os.fspath(prop)):
            raise InputError(f"property file not found: {prop}")
        p = parse_vnnlib(os.fspath(prop))
    if net is not None:
        p.check_sizes(net.n_inputs, net.n_outputs)
    else:
        inp = ort.session.get_inputs()[0].shape[1:]
        if all(isinstance(s, int) for s in inp):
            p.check_sizes(int(np.prod(inp)), None)
    return net, ort, p, note


def verify(model, prop, timeout: float | None = 300.0, methods=None, *, seed: int = 0, split: bool = True,
           max_split_dims: int = 32, attack: bool = True, max_memory: int | None = None, log_fn=None) -> Result:
    """Decide a VNN-LIB property on a network within ``timeout`` seconds.

    ``model``: ONNX path or :class:`~onnxverify.network.Network`; ``prop``: VNN-LIB path or
    :class:`~onnxverify.vnnlib.Property`; ``methods``: the bound cascade (see
    :func:`parse_methods`; default :data:`DEFAULT_CASCADE`); ``split``: bisect the input box
    when at most ``max_split_dims`` inputs are free; ``max_memory``: bytes a bound method may
    use (default: the engine's); ``log_fn(entry)`` sees each step.
    Bad files raise :class:`~onnxverify.errors.OnnxVerifyError` /
    :class:`~onnxverify.vnnlib.VnnlibError`; everything after loading is contained in the
    returned :class:`Result`.
    """
    t0 = time.monotonic()
    timeout = None if timeout is None or not np.isfinite(timeout) else float(timeout)
    default = methods is None
    cascade, missing = available_cascade(parse_methods(methods))
    if methods is not None and missing and not cascade:
        from .bounds import METHODS

        raise InputError(f"none of the methods {', '.join(m for m, _ in missing)} is available "
                         f"(have: {', '.join(METHODS)})")
    net, ort, p, note = _load(model, prop)
    if default and p.n_inputs > LARGE_INPUT:
        cascade = [(m, s) for m, s in cascade if not _forward_map_method(m)] or cascade
    solver = _Solver(net, ort, p, t0, timeout, cascade, seed, split, max_split_dims, log_fn, max_memory)
    if note:
        solver.note("load", t0, note=f"IR import failed, attacking through onnxruntime only: {note[:300]}")
    if missing:
        solver.note("cascade", t0, note="not available: " + ", ".join(f"{m}" + (f":{s}" if s else "") for m, s in missing))
    verdict, message = "unknown", ""
    # the alarm fires between the soft deadline and the real one, so the answer is still in time
    guard = solver.deadline + solver.margin / 2
    try:
        with _alarm(guard):
            _run(solver, net, attack)
    except _Decided as d:
        verdict = d.verdict
    except _TimeUp:
        verdict = "timeout"
    except (MemoryError, MemoryLimitError) as e:
        verdict, message = "error", f"out of memory: {str(e)[:200]}"
    except Exception as e:  # an internal failure: report it, never guess
        verdict, message = "error", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    if solver.confirm.found is not None:  # a confirmed counterexample always wins
        verdict = "sat"
    if verdict == "unknown" and note:
        message = "IR import failed; only sampling was tried"
    ce = solver.confirm.found if verdict == "sat" else None
    return Result(verdict, ce, time.monotonic() - t0, solver.log, message)


def _run(s: _Solver, net, attack: bool):
    budget = s.timeout if s.timeout is not None else 600.0
    n_in = s.prop.n_inputs
    small = n_in <= 64
    s.trivial_cases()
    if attack:
        s.attack("attack:quick", min(0.05 * budget + 0.2, 3.0), 4096 if small else 64, 8, 20)
    if net is None:
        if attack:
            s.attack("attack:sampling", 0.5 * s.remaining(), 100_000, 0, 0)
        return
    spent = []  # seconds per bound step so far
    for i, (method, strategy) in enumerate(s.cascade):
        left = len(s.cascade) - i
        if left > 1 and spent and s.remaining() < 2.5 * max(spent) * left:
            s.note(method + (f":{strategy}" if strategy else ""), time.monotonic(), result="skipped",
                   note="not enough time for every method: going to the tightest")
            continue
        t = time.monotonic()
        s.bound_step(method, strategy)
        spent.append(time.monotonic() - t)
        if i == 0 and attack:
            s.attack("attack:pgd", min(0.1 * budget, 10.0), 8192 if small else 256, 64, 50)
    # every strategy gives sound bounds: retry the open rows with the others of the final method
    if s.best_method is not None and s.best_method[0] != "ibp" and spent:
        from .bounds import STRATEGIES

        method, used = s.best_method
        for strategy in ("tight",):
            if strategy != (used or "adaptive") and strategy in STRATEGIES and s.remaining() > 3 * spent[-1] + 1:
                s.bound_step(method, strategy, extra=True)
    if s.split_applicable():
        s.branch_and_bound()
    elif attack:
        s.attack("attack:long", min(0.25 * budget, 0.5 * s.remaining(), 30.0), 16384 if small else 512, 256, 100)
