"""beta-CROWN branch and bound: split-constrained bounds are sound on their subdomain, and the
search is complete on tiny random networks (ReLU, LeakyReLU, ParamRamp), checked against the
exact MILP optimum (itself checked by sampling)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ir_nets
from conftest import torch_available
from onnxverify.specs.vnnlib import Case

pytestmark = [pytest.mark.usefixtures("one_blas_thread"),
              pytest.mark.skipif(not torch_available(), reason="branch and bound needs torch")]

#: activation pairs of the random nets: piecewise linear (exact pieces after a split) and
#: S-shaped (split where a narrower interval tightens the lines)
ACTS = [("Relu", "Relu"), ("LeakyRelu", "Relu"), ("ParamRamp", "ParamRamp"), ("ParamRamp", "LeakyRelu"),
        ("Sigmoid", "Tanh"), ("Relu", "Sigmoid")]


class _Net:
    def __init__(self, graph):
        self.graph = graph
        self.input_shape = graph.input_shape


class StubSolver:
    """What the search needs of the cascade's solver; counterexamples are confirmed on the
    exact IR forward (no ONNX model here)."""

    def __init__(self, graph, timeout=60.0):
        import time

        self.net = _Net(graph)
        self.deadline = time.monotonic() + timeout
        self.max_memory = None
        self.n_out = graph[graph.output].size
        self.found = None

    def check_time(self):
        import time

        from onnxverify.verify.deadline import TimeUp

        if time.monotonic() >= self.deadline:
            raise TimeUp()

    def confirm(self, xs, case):
        xs = np.clip(np.asarray(xs, dtype=np.float64), case.x_lower, case.x_upper)
        ys = ir_nets.outputs(self.net.graph, xs.reshape((len(xs),) + self.net.input_shape))
        for x, y in zip(xs, ys):
            for A, b in case.y_disjuncts:
                if np.all(A @ y <= b):
                    self.found = (x, y)
                    return True
        return False


class _CS:
    def __init__(self, case):
        self.case = case


def _problem(graph, lo, hi, R, b, dtype=np.float64):
    from onnxverify.bounds.optimized import alpha_crown
    from onnxverify.specs.input_sets import Box
    from onnxverify.verify.bab import flat_alpha
    from onnxverify.verify.beta import BabProblem

    box = Box(lo[None], hi[None])
    res = alpha_crown(graph, box, R, iters=5, upper=False)
    owner = np.zeros(len(b), dtype=np.int64)
    P = BabProblem(graph, lo, hi, R, b, owner, res.bounds, "adaptive", dtype, 1e-9)
    return P, flat_alpha(P, res.alphas, len(b))


def _exact_min(graph, lo, hi, r):
    """min of ``r @ y`` over the box by MILP on CROWN's bounds (exact), checked by sampling."""
    from onnxverify.bounds.optimized import alpha_crown
    from onnxverify.specs.input_sets import Box
    from onnxverify.verify.milp import encode, solve_disjunct

    res = alpha_crown(graph, Box(lo[None], hi[None]), r[None], iters=0, upper=False)
    enc = encode(graph, res.bounds, lo, hi)
    lower, value, x = solve_disjunct(enc, enc.var[graph.output], r[None], np.zeros(1), 30.0)
    assert abs(lower - value) < 1e-6
    xs = ir_nets.box_points(np.random.default_rng(0), lo, hi, 4000)
    ys = ir_nets.outputs(graph, xs) @ r
    assert ys.min() >= value - 1e-6  # MILP's optimum is not above any sampled value
    return value


def _random_splits(rng, P, B, D):
    """``(node, idx, side, t)`` of ``B`` subdomains with ``D`` random splits each, the split
    points inside the root's bounds."""
    node = np.zeros((B, D), dtype=np.int64)
    idx = np.zeros((B, D), dtype=np.int64)
    side = rng.choice([-1, 1], (B, D))
    t = np.zeros((B, D))
    for i in range(B):
        for d in range(D):
            k = rng.integers(len(P.split_nodes))
            name = P.split_nodes[k]
            l_, u_ = (v.ravel() for v in P.root[name])
            j = rng.integers(l_.size)
            node[i, d], idx[i, d] = k, j
            t[i, d] = rng.uniform(l_[j], u_[j]) if u_[j] > l_[j] else l_[j]
    return node, idx, side, t


def _inside(P, vals, splits, i):
    """``(N,)``: the sampled points that satisfy subdomain ``i``'s splits."""
    node, idx, side, t = splits
    n = len(next(iter(vals.values())))
    inside = np.ones(n, dtype=bool)
    for d in range(node.shape[1]):
        h = vals[P.split_nodes[node[i, d]]].reshape(n, -1)[:, idx[i, d]]
        inside &= side[i, d] * (h - t[i, d]) >= 0
    return inside


@pytest.mark.parametrize("seed", range(6))
def test_refreshed_bounds_hold_on_each_subdomain_and_tighten(seed):
    """The split nodes after a subdomain's first split, re-bounded by CROWN on the
    subdomain, contain every sampled value of the subdomain and lie inside the clamped
    bounds; over the seeds they are strictly tighter somewhere."""
    from onnxverify.verify.refresh import refreshed_bounds

    rng = np.random.default_rng(seed)
    acts = ACTS[seed % len(ACTS)]
    g = ir_nets.dense_net(seed, sizes=(3, 8, 8, 8, 2), acts=acts + acts[1:], eta=0.1, scale=1.5)
    lo, hi = -np.ones(3), np.ones(3)
    P, _ = _problem(g, lo, hi, rng.normal(size=(2, 2)), np.zeros(2))
    splits = _random_splits(rng, P, 8, 2)
    clamped, empty = P.clamped_bounds(splits, propagate=False)
    fresh, empty2 = refreshed_bounds(P, clamped, empty, splits)
    assert np.all(empty2 >= empty)
    xs = ir_nets.box_points(rng, lo, hi, 20000)
    vals = ir_nets.values(g, xs)
    tighter = 0.0
    for i in range(8):
        inside = _inside(P, vals, splits, i)
        if empty2[i]:
            assert not inside.any()
            continue
        for name in P.split_nodes:
            (cl, ch), (fl, fh) = clamped[name], fresh[name]
            assert np.all(fl[i] >= cl[i] - 1e-12) and np.all(fh[i] <= ch[i] + 1e-12)
            v = vals[name].reshape(len(xs), -1)[inside]
            assert np.all(v >= fl[i].ravel() - 1e-9) and np.all(v <= fh[i].ravel() + 1e-9)
            tighter += float(((ch[i] - cl[i]) - (fh[i] - fl[i])).sum())
    if seed == 0:  # (checked to tighten for this seed)
        assert tighter > 1e-6


@pytest.mark.parametrize("refresh", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_split_constrained_bounds_sound_on_each_subdomain(seed, refresh):
    from onnxverify.bounds.optimized import torch_backend
    from onnxverify.verify.beta import DomainBatch, bound_domains

    rng = np.random.default_rng(seed)
    g = ir_nets.dense_net(seed, sizes=(3, 8, 8, 2), acts=ACTS[seed % len(ACTS)], eta=0.1, scale=1.5)
    lo, hi = -np.ones(3), np.ones(3)
    R = rng.normal(size=(2, 2))
    P, a0 = _problem(g, lo, hi, R, np.zeros(2))
    B, D = 6, 3
    splits = _random_splits(rng, P, B, D)
    doms = DomainBatch(splits, rng.uniform(0, 2, (B, D, 2)).astype(np.float32),
                       rng.uniform(0, 1, (B, 2, P.n_alpha)).astype(np.float32), np.ones((B, 1), bool))
    res = bound_domains(torch_backend(), P, doms, a0, iters=4, refresh=refresh)
    xs = ir_nets.box_points(rng, lo, hi, 20000)
    vals = ir_nets.values(g, xs)
    ys = ir_nets.outputs(g, xs) @ R.T
    checked = 0
    for i in range(B):
        inside = _inside(P, vals, splits, i)
        if res["empty"][i]:
            assert not inside.any()
            continue
        checked += inside.sum()
        assert np.all(ys[inside] >= res["lower"][i] - 1e-7)
    assert checked > 0


#: (activations, seed): each net is bounded against thresholds just below and above its exact minimum
COMPLETE_CASES = [(("Relu", "Relu"), 7), (("Relu", "Relu"), 8), (("LeakyRelu", "Relu"), 7),
                  (("ParamRamp", "ParamRamp"), 8), (("ParamRamp", "LeakyRelu"), 7)]


@pytest.mark.parametrize("acts,seed", COMPLETE_CASES)
def test_branch_and_bound_complete_on_tiny_nets(acts, seed):
    from onnxverify.verify.bab import BabSettings, neuron_bab
    from onnxverify.verify.deadline import Decided

    g = ir_nets.dense_net(seed, sizes=(3, 7, 6, 1), acts=acts, eta=0.1, scale=2.0)
    lo, hi = -np.ones(3), np.ones(3)
    r = np.ones(1)
    m = _exact_min(g, lo, hi, r)
    delta = 5e-3 * (1 + abs(m))
    for b, expect in ((m - delta, True), (m + delta, "sat")):
        s = StubSolver(g)
        case = Case(lo, hi, [(r[None], np.array([b]))])
        P, a0 = _problem(g, lo, hi, r[None], np.array([b]))
        stats = {}
        try:
            got = neuron_bab(s, _CS(case), P, a0, np.ones(1, bool), stats, BabSettings())
        except Decided as e:
            got = e.verdict
            assert s.found is not None and s.found[1][0] <= b
        assert got == expect, (acts, seed, b, m, stats)


def test_branch_and_bound_splits_sigmoid_neurons():
    """A ReLU -> Sigmoid net: the Sigmoid layer cannot be encoded exactly (no MILP leaf), so
    only splitting its neurons narrows their lines; a threshold just below the minimum that
    alpha-CROWN at the root cannot prove is proved, one just above is refuted with a
    counterexample."""
    from scipy.optimize import minimize

    from onnxverify.bounds.optimized import alpha_crown
    from onnxverify.specs.input_sets import Box
    from onnxverify.verify.bab import BabSettings, neuron_bab
    from onnxverify.verify.deadline import Decided

    g = ir_nets.dense_net(7, sizes=(3, 7, 6, 1), acts=("Relu", "Sigmoid"), eta=0.1, scale=2.0)
    lo, hi = -np.ones(3), np.ones(3)
    r = np.ones(1)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 41)] * 3), -1).reshape(-1, 3)
    ys = ir_nets.outputs(g, grid) @ r
    f = lambda x: float(ir_nets.outputs(g, x[None])[0] @ r)  # noqa: E731
    m = min(minimize(f, grid[i], bounds=[(-1, 1)] * 3, method="L-BFGS-B").fun for i in np.argsort(ys)[:10])
    root = float(alpha_crown(g, Box(lo[None], hi[None]), r[None], iters=20, upper=False).lower[0, 0])
    b_proved = m - 0.05 * (m - root)
    assert root < b_proved < m
    for b, expect in ((b_proved, True), (m + 0.01, "sat")):
        s = StubSolver(g, timeout=120.0)
        P, a0 = _problem(g, lo, hi, r[None], np.array([b]))
        assert "z1" in P.split_nodes  # the Sigmoid's input
        stats = {}
        try:
            got = neuron_bab(s, _CS(Case(lo, hi, [(r[None], np.array([b]))])), P, a0, np.ones(1, bool), stats,
                             BabSettings())
        except Decided as e:
            got = e.verdict
            assert s.found[1][0] <= b
        assert got == expect, (b, m, root, stats)


def test_cascade_runs_the_complete_steps(tmp_path):
    """IBP alone leaves the tiny net's property open; the complete steps decide it and -v
    names the step."""
    import test_verify as tv
    from onnxverify.verify import verify

    net = tv.tiny_net(tmp_path / "tiny.onnx")
    p = tv.prop(tmp_path, "(assert (<= Y_0 -0.5))\n")  # true min of y0 is 0, IBP says -1
    res = verify(net, p, timeout=30, methods="ibp", split=False)
    assert res.verdict == "unsat" and res.decided_by in ("alpha-crown", "milp", "bab")
    assert verify(net, p, timeout=30, methods="ibp", split=False, complete=False).verdict == "unknown"

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
#: instances the bound cascade leaves open and branch and bound decides in seconds
SUBSET = [("mnist_fc", "onnx/mnist-net_256x2.onnx", "vnnlib/prop_9_0.05.vnnlib", "unsat")]


@pytest.mark.skipif(not BENCH.exists(), reason="shared benchmarks not present")
@pytest.mark.parametrize("bench,onnx_,vnnlib,expected", SUBSET)
def test_branch_and_bound_decides_benchmark_subset(bench, onnx_, vnnlib, expected):
    from onnxverify.verify import verify

    d = BENCH / bench
    res = verify(d / onnx_, d / vnnlib, timeout=120)
    steps = {e["step"]: e for e in res.log}
    assert res.verdict == expected, res.log[-3:]
    assert "bab" in steps and steps["bab"]["result"] == "proved"  # the cascade alone did not decide it


def test_without_torch_verify_says_so_and_runs_the_milp(tmp_path, monkeypatch):
    import onnxverify.bounds.optimized as opt
    import test_verify as tv
    from onnxverify.errors import BackendError
    from onnxverify.verify import verify

    def missing(device=None):
        raise BackendError("optimised bounds (alpha-CROWN, beta-CROWN) need torch for their gradients: no torch")

    monkeypatch.setattr(opt, "torch_backend", missing)
    net = tv.tiny_net(tmp_path / "tiny.onnx")
    p = tv.prop(tmp_path, "(assert (<= Y_0 -0.5))\n")
    res = verify(net, p, timeout=30, methods="ibp", split=False)
    steps = {e["step"]: e for e in res.log}
    assert steps["alpha-crown"]["result"] == "skipped" and "need torch" in steps["alpha-crown"]["note"]
    assert res.verdict == "unsat" and res.decided_by == "milp"
