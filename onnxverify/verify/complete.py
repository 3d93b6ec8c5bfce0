"""The complete steps of the cascade, per open input case: alpha-CROWN on the open rows, an
exact MILP when the network is small enough, then branch and bound on neuron splits
(beta-CROWN) until every subdomain is proved, a counterexample is confirmed, or time runs
out. Every step logs what it did (``verify -v``)."""
from __future__ import annotations

import time

import numpy as np

from ..errors import BackendError, MemoryLimitError
from ..ops import rule_of
from ..specs.input_sets import Box
from .deadline import Decided, TimeUp

__all__ = ["complete_steps", "case_rows", "root_bounds"]

#: above this many input values, bounds are float32 with a relative proof margin
LARGE_INPUT = 1024


def case_rows(cs):
    """The open rows of case ``cs``: ``(R (K, n_out), b (K,), owner (K,), disjunct ids (J,))``
    with ``owner`` renumbered ``0..J-1`` over the open disjuncts."""
    rows = cs.open[cs.owner]
    ids = np.flatnonzero(cs.open)
    remap = {d: i for i, d in enumerate(ids)}
    return cs.R[rows], cs.b[rows], np.array([remap[d] for d in cs.owner[rows]], dtype=np.int64), ids


def _dtype(s):
    return (np.float32, 1e-4) if s.prop.n_inputs > LARGE_INPUT else (np.float64, 1e-9)


def _margins_torch(lower, b, owner, J):
    import torch

    diff = lower - torch.as_tensor(b, dtype=lower.dtype)
    mask = torch.as_tensor(np.stack([owner == j for j in range(J)]))
    return diff[:, None, :].masked_fill(~mask[None], -np.inf).amax(2)  # (1, J)


def root_bounds(s, cs, R, b, owner, J, dtype, tol, iters=30):
    """alpha-CROWN on the case's box and open rows (an :class:`~onnxverify.bounds.optimized.AlphaResult`)."""
    from ..bounds.optimized import alpha_crown

    box = Box(cs.case.x_lower.reshape((1,) + s.net.input_shape), cs.case.x_upper.reshape((1,) + s.net.input_shape))

    def objective(lower, upper):
        return _margins_torch(lower, b, owner, J).clamp(max=0).sum()

    def done(lower):
        proved = lower > b[None] + tol * (1 + np.abs(b[None]) + np.abs(lower))
        return all(proved[0, owner == j].any() for j in range(J))

    from ..bounds.optimized import torch_backend

    torch_backend()  # the import (seconds on a busy machine) is not part of the cost estimate below
    kw = dict(strategy="adaptive", dtype=dtype, upper=False, objective=objective, done=done,
              max_memory=s.max_memory, patience=8)
    if not any(rule_of(n).splittable for n in s.net.graph.computed):
        # nothing to split (Sigmoid/Tanh nets): branch and bound cannot follow, the time goes here
        return alpha_crown(s.net.graph, box, R, iters=10 * iters, **kw,
                           deadline=min(s.deadline, time.monotonic() + 0.85 * s.remaining()))
    # first the output pass's lines alone (cheap), then every pass's lines when time allows
    t = time.monotonic()
    res = alpha_crown(s.net.graph, box, R, iters=iters, intermediate=False, **kw,
                      deadline=min(s.deadline, t + 0.1 * s.remaining()))
    if done(res.lower) or s.remaining() < 8 * (time.monotonic() - t) + 1.0:
        return res
    full = alpha_crown(s.net.graph, box, R, iters=iters, **kw,
                       deadline=min(s.deadline, time.monotonic() + 0.25 * s.remaining()))
    full.lower = np.maximum(full.lower, res.lower)  # both are sound bounds
    full.init_lower = res.init_lower
    return full


#: below this many seconds left, a process that has not imported torch yet skips the steps that need it
TORCH_IMPORT_S = 20.0


def _torch_ready(s) -> bool:
    """Whether torch is usable for the rest of the budget: already imported, or imported now
    with SIGALRM held back (an import cut off half way would leave a broken torch in this
    worker for its next instances); False when too little time is left to try. Raises
    :class:`~onnxverify.errors.BackendError` when torch is missing."""
    import sys

    from ..bounds.optimized import torch_backend

    if "torch" in sys.modules:
        torch_backend()
        return True
    if s.remaining() < TORCH_IMPORT_S:
        return False
    torch_backend()  # the backend imports torch with the deadline alarm held back
    return True


def complete_steps(s):
    """Run alpha-CROWN, MILP and neuron branch and bound on every open case of solver ``s``;
    raises ``Decided("unsat")`` when every case is proved."""
    from .bab import BabSettings, bab_by_disjunct, flat_alpha
    from .beta import BabProblem
    from .milp import decide_case

    dtype, tol = _dtype(s)
    t = time.monotonic()
    try:
        if not _torch_ready(s):
            s.note("alpha-crown", t, result="skipped", note="too little time left to import torch")
            return
    except BackendError:
        pass  # no torch: each case says so below and gets the MILP alone
    for cs in s.open_cases():
        if cs.trivial:
            return
        s.check_time()
        t = time.monotonic()
        R, b, owner, ids = case_rows(cs)
        J = len(ids)
        try:
            res = root_bounds(s, cs, R, b, owner, J, dtype, tol)
        except BackendError as e:
            s.note("alpha-crown", t, result="skipped", note=f"{e} (alpha-CROWN, beta-CROWN skipped)")
            _milp_only(s, cs, dtype)
            continue
        except (MemoryLimitError, MemoryError) as e:
            s.note("alpha-crown", t, result="skipped", note=f"memory: {str(e)[:200]}")
            return
        low = res.lower
        proved = (low > b[None] + tol * (1 + np.abs(b[None]) + np.abs(low)))[0]
        for j, d in enumerate(ids):
            if proved[owner == j].any():
                cs.open[d] = False
        crown = res.init_lower - b[None]
        s.note("alpha-crown", t, result="bounds", open_disjuncts=s.n_open(), iterations=res.iterations,
               worst_margin=round(float(np.min(low - b[None])), 6), crown_worst_margin=round(float(np.min(crown)), 6),
               intermediate_optimized=res.info.get("intermediate_optimized"))
        if not cs.open.any():
            continue
        # exact MILP first when it is small
        t = time.monotonic()
        bounds = res.bounds
        verdict = decide_case(s, cs, bounds, min(0.1 * s.remaining(), 10.0), max_binaries=30)
        if verdict != "skipped" and not verdict.startswith("skipped"):
            s.note("milp", t, result=verdict, open_disjuncts=s.n_open())
            if verdict == "sat":
                raise Decided("sat")
            if verdict == "proved" or not cs.open.any():
                continue
        still = cs.open[ids][owner]  # root rows whose disjunct is still open
        R, b, owner, ids = case_rows(cs)
        P = BabProblem(s.net.graph, cs.case.x_lower, cs.case.x_upper, R, b, owner, bounds, "adaptive", dtype, tol)
        root_alpha = flat_alpha(P, {n: tuple(a[:, still] for a in v) for n, v in res.alphas.items()}, len(b))
        t = time.monotonic()
        stats = {}

        def proved(j):
            cs.open[ids[j]] = False

        try:
            ok = bab_by_disjunct(s, cs, P, root_alpha, res.lower[:, still], stats, BabSettings(), proved)
        except TimeUp:
            s.note("bab", t, result="timeout", **_summary(stats, t))
            raise
        except Decided:
            s.note("bab", t, result="counterexample", **_summary(stats, t))
            raise
        except (MemoryLimitError, MemoryError) as e:
            s.note("bab", t, result="skipped", note=f"memory: {str(e)[:200]}", **_summary(stats, t))
            return
        s.note("bab", t, result="proved" if ok else "gave up", **_summary(stats, t))
        if not ok:
            return
        cs.open[:] = False
    if not s.open_cases():
        raise Decided("unsat")


def _summary(stats, t):
    dt = max(time.monotonic() - t, 1e-9)
    out = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in stats.items()}
    out["domains_per_s"] = round(stats.get("bounded", 0) / dt, 1)
    return out


def _milp_only(s, cs, dtype):
    """Without torch: MILP on CROWN's intermediate bounds."""
    from ..backend import get_backend
    from ..bounds.ibp import interval_bounds
    from ..bounds.methods import intermediate_bounds
    from .milp import decide_case

    t = time.monotonic()
    bk = get_backend("numpy")
    box = Box(cs.case.x_lower.reshape((1,) + s.net.input_shape), cs.case.x_upper.reshape((1,) + s.net.input_shape))
    env = interval_bounds(bk, s.net.graph, box, dtype)
    eng = intermediate_bounds(s.net.graph, box, "crown", "adaptive", bk, dtype, env, s.max_memory)
    bounds = {n: tuple(np.asarray(v, dtype=np.float64) for v in eng.best(n)) for n in env}
    verdict = decide_case(s, cs, bounds, 0.8 * s.remaining(), max_binaries=200)
    s.note("milp", t, result=verdict, open_disjuncts=s.n_open())
    if verdict == "sat":
        raise Decided("sat")
