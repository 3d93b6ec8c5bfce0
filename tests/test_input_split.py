"""Batched input splitting: the box bounds (with inherited intermediate bounds) and the joint
disjunct bound are sound by sampling; the search is complete on tiny low-dimensional nets
(thresholds either side of the exact MILP optimum); batching does not change verdicts; the
cascade pauses splitting for the complete steps and resumes; the race and the combined-row
proofs are sound and decide like the default; fast ACAS Xu and reach_prob_density instances
are decided with their known answers."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

import ir_nets
from onnxverify.specs.vnnlib import Case, Property

pytestmark = pytest.mark.usefixtures("one_blas_thread")


class _Net:
    def __init__(self, graph):
        self.graph, self.input_shape = graph, graph.input_shape


def _solver(graph, case, timeout=30.0):
    """The cascade's solver on an IR graph, counterexamples confirmed on the IR forward
    (float32, like onnxruntime) against the property."""
    from onnxverify.verify.cascade import Solver

    n_out = graph[graph.output].size
    prop = Property(case.x_lower.size, n_out, [case])

    def ort(x):
        return ir_nets.outputs(graph, np.asarray(x, dtype=np.float32)).astype(np.float32)

    s = Solver(_Net(graph), ort, prop, time.monotonic(), timeout, [("crown", "adaptive")], 0, True, 32, None)
    s.best_method = ("crown", "adaptive")
    s.complete = False
    return s


def _exact_min(graph, lo, hi, r):
    """min of ``r @ y`` over the box: MILP with IBP big-M (exact), checked by sampling."""
    from onnxverify.backend import get_backend
    from onnxverify.bounds.ibp import interval_bounds
    from onnxverify.specs.input_sets import Box
    from onnxverify.verify.milp import encode, solve_disjunct

    env = interval_bounds(get_backend("numpy"), graph, Box(lo[None], hi[None]), np.float64)
    enc = encode(graph, {k: tuple(np.asarray(v).reshape(-1) for v in b) for k, b in env.items()}, lo, hi)
    lower, value, _ = solve_disjunct(enc, enc.var[graph.output], r[None], np.zeros(1), 30.0)
    assert abs(lower - value) < 1e-6
    ys = ir_nets.outputs(graph, ir_nets.box_points(np.random.default_rng(0), lo, hi, 4000)) @ r
    assert ys.min() >= value - 1e-6
    return value


@pytest.mark.parametrize("seed", range(3))
def test_box_bounds_sound_with_inherited_bounds(seed):
    from onnxverify.verify.box_bounds import BoxBounder

    rng = np.random.default_rng(seed)
    g = ir_nets.dense_net(seed, sizes=(3, 10, 8, 3), scale=2.0)
    R = rng.normal(size=(4, 3))
    bb = BoxBounder(g, R)
    P_lo, P_hi = -np.ones((1, 3)), np.ones((1, 3))
    _, _, parent = bb(P_lo, P_hi)
    lo = rng.uniform(-1, 0.5, size=(6, 3))
    hi = np.minimum(lo + rng.uniform(0.05, 1.0, size=(6, 3)), 1.0)
    par = {n: (a.repeat(6, axis=0), b.repeat(6, axis=0)) for n, (a, b) in parent.items()}
    lower, (A, c), bounds = bb(lo, hi, parent=par)
    for i in range(6):
        xs = ir_nets.box_points(rng, lo[i], hi[i], 500)
        vals = ir_nets.values(g, xs)
        ry = ir_nets.outputs(g, xs) @ R.T
        assert np.all(ry >= lower[i] - 1e-9)
        assert np.all(ry >= xs @ A[i].T + c[i] - 1e-9)  # the linear lower bounds hold
        for n, (bl, bh) in bounds.items():
            v = vals[n].reshape(len(xs), -1)
            assert np.all(v >= bl[i] - 1e-6) and np.all(v <= bh[i] + 1e-6)
            # inherited: never looser than the parent's
            assert np.all(bl[i] >= parent[n][0][0]) and np.all(bh[i] <= parent[n][1][0])


@pytest.mark.parametrize("seed,method,dtype", [(0, "crown", np.float64), (1, "crown-lbp", np.float64),
                                                (2, "crown", np.float32), (3, "crown-lbp", np.float32)])
def test_joint_rows_sound_and_proofs_hold_by_sampling(seed, method, dtype):
    """:meth:`BoxBounder.joint` bounds per-box combined rows below every sampled value, and
    a disjunct :func:`joint_proofs` calls infeasible has no sampled point inside it."""
    from onnxverify.verify.box_bounds import BoxBounder, joint_proofs

    rng = np.random.default_rng(seed)
    g = ir_nets.dense_net(seed, sizes=(3, 12, 10, 3), scale=2.0)
    R = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    owner = np.array([0, 0, 0, 1])
    bb = BoxBounder(g, R, method, "adaptive", dtype)
    lo = rng.uniform(-1, 0.5, size=(8, 3))
    hi = np.minimum(lo + rng.uniform(0.02, 0.6, size=(8, 3)), 1.0)
    bb(lo, hi)
    lam = np.zeros((8, 2, 4))
    lam[:, 0, :3] = rng.dirichlet(np.ones(3), size=8)
    lam[:, 1, 3] = 1.0
    low, A = bb.joint(np.einsum("nmk,ko->nmo", lam, R))
    ys = [ir_nets.outputs(g, ir_nets.box_points(rng, lo[i], hi[i], 600)) for i in range(8)]
    slack = 1e-9 if dtype == np.float64 else 1e-4
    for i in range(8):
        comb = ys[i] @ (lam[i] @ R).T  # (600, 2)
        assert np.all(comb >= low[i] - slack * (1 + np.abs(low[i])))
    # thresholds between the sampled minimum of the first disjunct's rows and its bound
    for q in (0.0, 0.5, 1.0):
        b = np.array([np.quantile(np.concatenate([y @ R[k] for y in ys]), q) for k in range(4)])
        proved = joint_proofs(bb, np.ones((8, 2), dtype=bool), lam, R, b, owner, 1e-9 if dtype == np.float64 else 1e-4)
        assert not proved[:, 1].any()  # one row: left to the rows' own bounds
        for i in np.flatnonzero(proved[:, 0]):
            assert not np.any(np.all(ys[i] @ R[:3].T <= b[:3], axis=1))


@pytest.mark.parametrize("seed", range(4))
def test_joint_disjunct_bound_is_a_sound_lp_bound(seed):
    """``g`` is at most ``min_x max_k (A_k x + c_k - b_k)`` (LP duality, so never a false
    proof) and, after the ascent, close to it; at least the best single row."""
    from onnxverify.verify.box_bounds import disjunct_dual

    rng = np.random.default_rng(seed)
    N, K = 5, 3
    A, c, b = rng.normal(size=(N, K, 2)), rng.normal(size=(N, K)), rng.normal(size=K)
    lo, hi = -np.ones((N, 2)), np.ones((N, 2))
    G, coef, scale, lam = disjunct_dual(A, c, b, np.zeros(K, dtype=int), 1, lo, hi, iters=200)
    t = np.linspace(-1, 1, 401)
    X = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    for i in range(N):
        worst = (X @ A[i].T + c[i] - b).max(axis=1).min()
        single = (c[i] - b - np.abs(A[i]).sum(axis=1)).max()
        assert G[i, 0] <= worst + 1e-9
        assert G[i, 0] >= single - 1e-12
        assert G[i, 0] >= worst - 0.05 * (1 + abs(worst))


def _decide(graph, case, **kw):
    from onnxverify.verify.deadline import Decided
    from onnxverify.verify.input_split import branch_and_bound

    s = _solver(graph, case)
    try:
        branch_and_bound(s, **kw)
    except Decided as e:
        if e.verdict == "sat":
            x, y = s.confirm.found
            assert np.all(x >= case.x_lower) and np.all(x <= case.x_upper)
            assert any(np.all(A @ y <= b) for A, b in case.y_disjuncts)
        return e.verdict, s
    return None, s


COMPLETE = [(seed, dims) for seed in range(3) for dims in (2, 4)]


CONFIGS = [("crown", "adaptive", np.float64), ("crown-lbp", "adaptive", np.float64),
           ("crown", "adaptive", np.float32), ("crown-lbp", "adaptive", np.float32)]


@pytest.mark.parametrize("seed,dims", COMPLETE)
def test_input_splitting_complete_on_tiny_nets(seed, dims):
    g = ir_nets.dense_net(seed, sizes=(dims, 12, 8, 1), scale=2.0)
    lo, hi = -np.ones(dims), np.ones(dims)
    r = np.ones(1)
    m = _exact_min(g, lo, hi, r)
    delta = 5e-3 * (1 + abs(m))
    config = CONFIGS[(seed + dims) % len(CONFIGS)]  # every method and precision the race may pick
    for b, expect in ((m - delta, "unsat"), (m + delta, "sat")):
        got, s = _decide(g, Case(lo, hi, [(r[None], np.array([b]))]), config=config)
        assert got == expect, (seed, dims, config, b, m, s.bab_stats)


@pytest.mark.parametrize("config", CONFIGS)
def test_each_race_candidate_decides_several_row_disjuncts(config):
    """A three-row disjunct (where the combined-row proofs apply) either side of its exact
    threshold, with each configuration the race can choose."""
    g = ir_nets.dense_net(11, sizes=(3, 12, 8, 3), scale=2.0)
    lo, hi = -np.ones(3), np.ones(3)
    R = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 0.5]])
    # t* = min over the box of max_k (R y)_k: the disjunct R y <= t is empty below t*
    X = ir_nets.box_points(np.random.default_rng(0), lo, hi, 20000)
    t_grid = (ir_nets.outputs(g, X) @ R.T).max(axis=1).min()
    got, s = _decide(g, Case(lo, hi, [(R, np.full(3, t_grid + 0.02))]), config=config)
    assert got == "sat", (config, s.bab_stats)
    t_low = t_grid - 0.15  # below t*: the grid's minimum is within 0.15 of it on this net
    got, s = _decide(g, Case(lo, hi, [(R, np.full(3, t_low))]), config=config)
    assert got == "unsat", (config, s.bab_stats)


def test_race_keeps_the_search_that_proved_most_volume(monkeypatch):
    """Candidates in order (the default first), each its slice; the largest proved volume
    wins; a candidate that proves the case wins at once and stops the race."""
    from onnxverify.verify import input_split as IS

    g = ir_nets.dense_net(0, sizes=(2, 4, 1))
    s = _solver(g, Case(-np.ones(2), np.ones(2), [(np.ones((1, 1)), np.full(1, -1e6))]))
    s.ran_ok = [("ibp", None), ("crown-lbp", "adaptive"), ("crown", "adaptive")]
    s.bab_stats = IS.SplitState().stats
    volumes = {("crown", np.float64): 0.5, ("crown-lbp", np.float64): 0.7, ("crown-lbp", np.float32): 0.6}

    def fake_slice(s_, srch, seconds):
        srch.queue = [0]
        srch.proved_volume = volumes[(srch.config[0], srch.config[2])]
        return srch.proved_volume >= 1.0

    monkeypatch.setattr(IS, "_run_slice", fake_slice)
    trial = []
    best = IS._race(s, s.cases[0], None, None, None, trial)
    assert [(t["method"], t["dtype"]) for t in trial] == [("crown+adaptive", "float64"),
                                                         ("crown-lbp+adaptive", "float64"),
                                                         ("crown-lbp+adaptive", "float32")]
    assert best.config[:1] == ("crown-lbp",) and best.config[2] == np.float64
    volumes[("crown-lbp", np.float64)] = 1.0  # proves the case: no float32 trial
    trial = []
    best = IS._race(s, s.cases[0], None, None, None, trial)
    assert len(trial) == 2 and best.proved_volume == 1.0
    trial = []  # not enough time before the pause: no race
    IS._race(s, s.cases[0], None, None, time.monotonic() + 0.1, trial)
    assert trial == []


def test_several_rows_and_disjuncts_against_a_dense_grid():
    """Two disjuncts with two rows each (a box-shaped unsafe set and a half-plane), on a
    2-input net: the verdict matches a dense grid of the exact outputs."""
    g = ir_nets.dense_net(7, sizes=(2, 16, 16, 2), scale=2.0)
    lo, hi = -np.ones(2), np.ones(2)
    t = np.linspace(-1, 1, 601)
    X = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    Y = ir_nets.outputs(g, X)
    a = np.median(Y, axis=0)
    depth = (Y - a).min(axis=1).max()  # how far into {y0 >= a0, y1 >= a1} the grid gets
    s_top = (Y[:, 0] + Y[:, 1]).max()
    span = 1 + np.abs(Y).max()
    for shift, expect in ((0.03, "unsat"), (-0.03, "sat")):
        # unsafe: y0 >= a0 + depth + shift and y1 >= a1 + depth + shift, or y0 + y1 >= s_top + shift
        d1 = (-np.eye(2), -(a + depth + shift * span))
        d2 = (-np.ones((1, 2)), -np.array([s_top + shift * span]))
        case = Case(lo, hi, [d1, d2])
        grid_sat = bool(((Y @ d1[0].T <= d1[1]).all(axis=1) | (Y @ d2[0].T <= d2[1]).all(axis=1)).any())
        if expect == "sat":
            assert grid_sat
        got, s = _decide(g, case)
        assert got == expect, (shift, s.bab_stats)


@pytest.mark.parametrize("k_trial", [1, 3])
def test_batching_gives_the_verdicts_of_batch_size_one(k_trial):
    g = ir_nets.dense_net(3, sizes=(3, 12, 8, 1), scale=2.0)
    lo, hi = -np.ones(3), np.ones(3)
    r = np.ones(1)
    m = _exact_min(g, lo, hi, r)
    for b in (m - 0.02 * (1 + abs(m)), m + 0.02 * (1 + abs(m))):
        case = Case(lo, hi, [(r[None], np.array([b]))])
        one, s1 = _decide(g, case, k_trial=k_trial, max_children=2)
        many, s2 = _decide(g, case, k_trial=k_trial)
        assert one == many and one is not None
        assert s1.bab_stats["rounds"] >= s2.bab_stats["rounds"]


def test_cascade_pauses_splitting_for_the_complete_steps_and_resumes(tmp_path, monkeypatch):
    """With a policy that hands off at once, the complete steps run inside a soft deadline
    and splitting resumes from its queue; the verdict is the exact one."""
    pytest.importorskip("torch")
    import test_verify as tv
    from onnxverify.verify import cascade, verify

    monkeypatch.setattr(cascade, "split_policy", lambda s: (0.0, lambda state: True))
    net = tv.tiny_net(tmp_path / "tiny.onnx")
    p = tv.prop(tmp_path, "(assert (<= Y_0 -0.5))\n")  # true min of y0 is 0, IBP says -1
    res = verify(net, p, timeout=30, methods="ibp")
    steps = [e["step"] for e in res.log]
    assert res.verdict == "unsat", res.log
    assert steps.index("split") < steps.index("alpha-crown")
    assert res.log[steps.index("split")]["result"] == "paused"


BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
KNOWN = [("acasxu", "onnx/ACASXU_run2a_3_4_batch_2000.onnx", "vnnlib/prop_4.vnnlib"),
         ("acasxu", "onnx/ACASXU_run2a_1_1_batch_2000.onnx", "vnnlib/prop_2.vnnlib"),  # four rows, one disjunct
         # five rows in one disjunct; timed out at 60 s before the race and the combined-row proofs
         ("reach_prob_density", "onnx/robot.onnx", "vnnlib/robot_6.vnnlib")]


@pytest.mark.skipif(not BENCH.exists(), reason="shared benchmarks not present")
@pytest.mark.parametrize("family,onnx_,vnnlib", KNOWN)
def test_decides_a_fast_instance_with_its_known_answer(family, onnx_, vnnlib):
    from onnxverify.verify import verify

    with open(BENCH / "ground_truth.csv") as f:
        expected = next(r["expected"] for r in csv.DictReader(f)
                        if r["benchmark"] == family and r["onnx"] == onnx_ and r["vnnlib"] == vnnlib)
    d = BENCH / family
    res = verify(d / onnx_, d / vnnlib, timeout=120)
    assert res.verdict == expected, res.log[-2:]
    if expected == "unsat":
        assert res.decided_by == "split"


def test_long_attack_only_where_the_attacks_came_close():
    """The attack before the complete steps is long when the best attack margin is small
    next to the gap to the bound, short when it is far (or nothing is known)."""
    g = ir_nets.dense_net(0, sizes=(2, 4, 1))
    s = _solver(g, Case(-np.ones(2), np.ones(2), [(np.ones((1, 1)), np.zeros(1))]), timeout=60.0)
    assert s.long_attack_budget(60.0) <= 2.0  # nothing measured yet
    s.bound_margin[0] = -1.0
    s.attack_margin[0] = 0.01  # 1 % of the gap: sat looks likely
    assert s.long_attack_budget(60.0) >= 10.0
    s.attack_margin[0] = 2.0  # the attack stayed far from the unsafe set
    assert s.long_attack_budget(60.0) <= 2.0
    assert s.sat_likelihood() == pytest.approx(2.0 / 3.0)


def test_split_policy_splits_to_the_end_without_the_complete_steps():
    from onnxverify.verify.input_split import split_policy

    g = ir_nets.dense_net(0, sizes=(2, 4, 1))
    s = _solver(g, Case(-np.ones(2), np.ones(2), [(np.ones((1, 1)), np.zeros(1))]))
    assert split_policy(s) is None
    s.complete = True
    first, hand_off = split_policy(s)
    assert 0 < first < s.remaining()
