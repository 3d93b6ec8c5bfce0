"""VNN-LIB verdicts: ``sat`` / ``unsat`` / ``unknown`` / ``timeout`` / ``error``.

:func:`verify` answers one property on one network within a time limit:

* ``unsat`` only when every output disjunct of every input case is proved infeasible: a
  disjunct ``A y <= b`` is infeasible on a box when some row has a sound lower bound
  ``(A y)_k > b_k`` (all open rows of a case go to the bound engine as one spec matrix);
* ``sat`` only with an input that onnxruntime confirms lands in the unsafe set;
* ``unknown`` when every step ran and none decided; ``timeout`` when the budget ran out.

The steps are a cascade from cheap to tight (:data:`DEFAULT_CASCADE`) with attacks interleaved, then input bisection
(branch and bound over the input box) for networks with few free inputs, or a last long
attack otherwise. The time limit is checked between steps and enforced inside long steps
by a SIGALRM guard (main thread only); the VNN-COMP runner's worker process is the final
guard.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..errors import MemoryLimitError, OnnxVerifyError
from ..specs.input_sets import Box
from .deadline import Decided, TimeUp, alarm
from .complete import complete_steps
from .input_split import branch_and_bound, split_applicable, split_policy
from .loading import load_problem, prop_input_shape

__all__ = ["Result", "verify", "DEFAULT_CASCADE", "parse_methods", "VERDICTS"]

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")

#: (method, strategy) from cheap to tight; entries the bound engine lacks are skipped.
DEFAULT_CASCADE = (("ibp", None), ("crown-ibp", "adaptive"), ("crown-lbp", "adaptive"), ("crown", "adaptive"))

#: Above this many inputs, bounds are computed in float32 (with a relative proof margin)
#: and the default cascade drops the methods built on forward linear maps (lbp, crown-lbp,
#: relaxed-crown-V), whose cost grows with the input size while crown is tighter.
LARGE_INPUT = 1024


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

    @property
    def decided_by(self) -> str | None:
        """The step that decided a ``sat``/``unsat`` verdict (the last one logged), else None."""
        return self.log[-1]["step"] if self.verdict in ("sat", "unsat") and self.log else None

    def summary(self) -> str:
        return f"{self.verdict} ({self.time:.2f} s){': ' + self.message if self.message else ''}"


def parse_methods(spec) -> list:
    """The bound cascade: None -> :data:`DEFAULT_CASCADE`; else ``"ibp,crown:adaptive"`` or a
    list, parsed and checked by :func:`onnxverify.bounds.parse_method_list` (an unknown method
    or strategy is an :class:`~onnxverify.errors.InputError` that names it)."""
    from ..bounds import parse_method_list

    return list(DEFAULT_CASCADE) if spec is None else parse_method_list(spec)


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


class Solver:
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
        self.attack_margin = {}  # case index -> smallest disjunct margin an attack reached
        self.bound_margin = {}  # case index -> best sound lower bound of the worst open disjunct margin

    # ---- bookkeeping ------------------------------------------------------------
    def remaining(self):
        return self.deadline - time.monotonic()

    def check_time(self):
        if time.monotonic() >= self.deadline:
            raise TimeUp()

    def note(self, step, t_start, **info):
        entry = {"step": step, "time": round(time.monotonic() - t_start, 4),
                 "elapsed": round(time.monotonic() - self.t0, 3), **info}
        self.log.append(entry)
        if self.log_fn:
            self.log_fn(entry)

    @contextmanager
    def soft_deadline(self, t):
        """Steps inside stop (``TimeUp``) at ``t`` instead of the deadline (which stays)."""
        full = self.deadline
        self.deadline = min(full, t)
        try:
            yield
        finally:
            self.deadline = full

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
                    raise Decided("sat")

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
            ci = self.cases.index(cs)
            record = {"best": self.attack_margin.get(ci, np.inf)}
            if not found and len(best):
                record["best"] = min(record["best"], float(obj.margins(fwd(best)).min()))
            if not found and self.gradient_ok and restarts:
                try:
                    found = pgd_attack(self.net.graph, cs.case, obj, self.confirm, self.rng, restarts, steps,
                                       case_stop, starts=best, record=record)
                except GradientUnavailable as e:
                    self.gradient_ok = False
                    self.note(name, t, note=f"gradient unavailable: {e}")
            self.attack_margin[ci] = record["best"]
            if found:
                self.note(name, t, result="counterexample", checked=self.confirm.n_checked)
                raise Decided("sat")
        self.check_time()
        self.note(name, t, result="none", checked=self.confirm.n_checked, rejected=self.confirm.n_rejected)

    def sat_likelihood(self) -> float:
        """How close the attacks came, relative to the bounds: per open case, the best
        attack margin ``m >= 0`` over the gap ``m - lb`` to the worst open disjunct's lower
        bound ``lb < 0``; the smallest over the cases (0: an attack nearly reached the unsafe
        set, 1: nothing known or the attack is far). Small values make long attacks pay."""
        r = 1.0
        for i, cs in enumerate(self.cases):
            if cs.done or cs.trivial:
                continue
            m, lb = self.attack_margin.get(i, np.inf), self.bound_margin.get(i, -np.inf)
            if np.isfinite(m) and np.isfinite(lb) and lb < 0:
                m = max(m, 0.0)
                r = min(r, m / (m - lb))
        return r

    def long_attack_budget(self, budget) -> float:
        """Seconds for the attack before the complete steps: long only where sat looks likely
        (:meth:`sat_likelihood`), else short so the complete steps get the time."""
        r = self.sat_likelihood()
        if r < 0.05:
            return min(0.25 * budget, 0.5 * self.remaining(), 30.0)
        if r < 0.15:
            return min(0.1 * budget, 0.25 * self.remaining(), 8.0)
        return min(0.02 * budget + 0.5, 0.1 * self.remaining(), 2.0)

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
            diff = lower[0] - cs.b[rows]
            worst = min(float(diff[owner == d].max()) for d in np.flatnonzero(cs.open))
            ci = self.cases.index(cs)
            self.bound_margin[ci] = max(self.bound_margin.get(ci, -np.inf), worst)
            cs.open &= ~newly
        if not extra:
            self.best_method = (method, strategy)
            self.ran_ok.append((method, strategy))
        self.note(name, t, result="bounds", open_disjuncts=self.n_open())
        if not self.open_cases():
            raise Decided("unsat")

def verify(model, prop, timeout: float | None = 300.0, methods=None, *, seed: int = 0, split: bool = True,
           max_split_dims: int = 32, attack: bool = True, max_memory: int | None = None, log_fn=None,
           complete: bool = True) -> Result:
    """Decide a VNN-LIB property on a network within ``timeout`` seconds.

    ``model``: ONNX path or :class:`~onnxverify.network.Network`; ``prop``: VNN-LIB path or
    :class:`~onnxverify.specs.vnnlib.Property`; ``methods``: the bound cascade (see
    :func:`parse_methods`; default :data:`DEFAULT_CASCADE`); ``split``: bisect the input box
    when at most ``max_split_dims`` inputs are free; ``max_memory``: bytes a bound method may
    use (default: the engine's); ``log_fn(entry)`` sees each step; ``complete``: run the
    complete steps (alpha-CROWN, MILP, beta-CROWN branch and bound; :mod:`.complete`) once
    the bound cascade and input bisection leave disjuncts open.
    Bad files raise :class:`~onnxverify.errors.OnnxVerifyError` /
    :class:`~onnxverify.specs.vnnlib.VnnlibError`; everything after loading is contained in the
    returned :class:`Result`.
    """
    t0 = time.monotonic()
    timeout = None if timeout is None or not np.isfinite(timeout) else float(timeout)
    default = methods is None
    cascade = parse_methods(methods)
    net, ort, p, note = load_problem(model, prop)
    if default and p.n_inputs > LARGE_INPUT:
        from ..bounds import parse_method

        cascade = [(m, s) for m, s in cascade if not parse_method(m).uses_forward_maps] or cascade
    solver = Solver(net, ort, p, t0, timeout, cascade, seed, split, max_split_dims, log_fn, max_memory)
    solver.complete = complete and net is not None
    if note:
        solver.note("load", t0, note=f"IR import failed, attacking through onnxruntime only: {note[:300]}")
    verdict, message = "unknown", ""
    # the alarm fires between the soft deadline and the real one, so the answer is still in time
    guard = solver.deadline + solver.margin / 2
    try:
        with alarm(guard):
            _run(solver, net, attack)
    except Decided as d:
        verdict = d.verdict
    except TimeUp:
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


def _run(s: Solver, net, attack: bool):
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
            s.attack("attack:pgd", min(0.04 * budget + 0.5, 4.0), 8192 if small else 256, 64, 50)
    # every strategy gives sound bounds: retry the open rows with the others of the final method
    if s.best_method is not None and s.best_method[0] != "ibp" and spent:
        from ..bounds import STRATEGIES

        method, used = s.best_method
        for strategy in ("tight",):
            if strategy != (used or "adaptive") and strategy in STRATEGIES and s.remaining() > 3 * spent[-1] + 1:
                s.bound_step(method, strategy, extra=True)
    split_state = _input_split(s) if split_applicable(s) else None
    if attack and s.remaining() > 1.0:
        s.attack("attack:long", s.long_attack_budget(budget) if s.complete else
                 min(0.25 * budget, 0.5 * s.remaining(), 30.0), 16384 if small else 512, 256, 100)
    if s.complete:  # alpha-CROWN, MILP, beta-CROWN branch and bound (they attack their subdomains)
        if split_state is None:
            complete_steps(s)
            return
        # neuron branch and bound gets a turn, then input splitting resumes from its queue
        t = time.monotonic()
        with s.soft_deadline(t + 0.5 * s.remaining()):
            try:
                complete_steps(s)
            except TimeUp:
                pass
        s.check_time()
        s.note("complete", t, result="paused", note="input splitting resumes")
        branch_and_bound(s, state=split_state)


def _input_split(s):
    """Input splitting until it proves or decides, or (when :func:`split_policy` says so)
    pauses for neuron branch and bound; returns the state to resume from, or None."""
    policy = split_policy(s)
    if policy is None:
        branch_and_bound(s)  # until a verdict, the deadline or the queue limit
        return None
    first, hand_off = policy
    state = branch_and_bound(s, stop_at=time.monotonic() + first)
    while state is not None and not hand_off(state):
        state = branch_and_bound(s, stop_at=time.monotonic() + 0.2 * s.remaining() + 0.5, state=state)
    return state
