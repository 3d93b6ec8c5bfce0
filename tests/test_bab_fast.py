"""The throughput paths of branch and bound stay sound and complete: Adam steps in float32 with
the bounds from a last pass in the problem's dtype, the root's intermediate bounds clamped by
the splits instead of an interval pass per subdomain, and one search per disjunct."""
from __future__ import annotations

import numpy as np
import pytest

import ir_nets
import test_bab as tb
from conftest import torch_available
from onnxverify.specs.vnnlib import Case

pytestmark = [pytest.mark.usefixtures("one_blas_thread"),
              pytest.mark.skipif(not torch_available(), reason="branch and bound needs torch")]


def _random_domains(rng, P, B=6, D=3, K=2):
    from onnxverify.verify.beta import DomainBatch

    node = np.zeros((B, D), dtype=np.int64)
    idx = np.zeros((B, D), dtype=np.int64)
    side = rng.choice([-1, 1], (B, D))
    t = np.zeros((B, D))
    for i in range(B):
        used = set()
        for d in range(D):
            while True:  # distinct neurons per subdomain
                k = int(rng.integers(len(P.split_nodes)))
                l_, u_ = (v.ravel() for v in P.root[P.split_nodes[k]])
                j = int(rng.integers(l_.size))
                if (k, j) not in used:
                    break
            used.add((k, j))
            node[i, d], idx[i, d] = k, j
            t[i, d] = rng.uniform(l_[j], u_[j]) if u_[j] > l_[j] else l_[j]
    return DomainBatch((node, idx, side, t), rng.uniform(0, 2, (B, D, K)).astype(np.float32),
                       rng.uniform(0, 1, (B, K, P.n_alpha)).astype(np.float32), np.ones((B, 1), bool))


def _inside(vals, P, doms, i, n):
    node, idx, side, t = doms.splits
    inside = np.ones(n, dtype=bool)
    for d in range(node.shape[1]):
        h = vals[P.split_nodes[node[i, d]]].reshape(n, -1)[:, idx[i, d]]
        inside &= side[i, d] * (h - t[i, d]) >= 0
    return inside


@pytest.mark.parametrize("fast_dtype,propagate", [(np.float32, True), (np.float32, False), (None, False)])
@pytest.mark.parametrize("seed", range(6))
def test_fast_paths_sound_on_each_subdomain(seed, fast_dtype, propagate):
    from onnxverify.bounds.optimized import torch_backend
    from onnxverify.verify.beta import bound_domains

    rng = np.random.default_rng(seed)
    g = ir_nets.dense_net(seed, sizes=(3, 8, 8, 2), acts=tb.ACTS[seed % len(tb.ACTS)], eta=0.1, scale=1.5)
    lo, hi = -np.ones(3), np.ones(3)
    R = rng.normal(size=(2, 2))
    P, a0 = tb._problem(g, lo, hi, R, np.zeros(2))
    doms = _random_domains(rng, P)
    res = bound_domains(torch_backend(), P, doms, a0, iters=4, fast_dtype=fast_dtype, propagate=propagate)
    xs = ir_nets.box_points(rng, lo, hi, 20000)
    vals = ir_nets.values(g, xs)
    ys = ir_nets.outputs(g, xs) @ R.T
    checked = 0
    for i in range(len(doms)):
        inside = _inside(vals, P, doms, i, len(xs))
        if res["empty"][i]:
            assert not inside.any()
            continue
        checked += inside.sum()
        assert np.all(ys[inside] >= res["lower"][i] - 1e-7)
        for name, (l_, u_) in res["bounds"].items():  # the intermediate bounds hold there too
            if name in vals:
                v = vals[name].reshape(len(xs), -1)[inside]
                assert np.all(v >= l_[i].reshape(-1) - 1e-7) and np.all(v <= u_[i].reshape(-1) + 1e-7), name
    assert checked > 0


@pytest.mark.parametrize("seed", range(3))
def test_clamped_root_bounds_are_the_splits_on_the_root_and_never_tighter(seed):
    """Without the interval pass a split node's bounds are exactly the root's with its
    splits applied, every other node keeps the unsplit box's bounds, and none is tighter
    than the interval pass gives."""
    rng = np.random.default_rng(seed)
    g = ir_nets.dense_net(seed, sizes=(3, 8, 8, 8, 2), acts=("Relu", "LeakyRelu", "Relu"), scale=1.5)
    lo, hi = -np.ones(3), np.ones(3)
    P, _ = tb._problem(g, lo, hi, rng.normal(size=(2, 2)), np.zeros(2))
    doms = _random_domains(rng, P, B=8, D=4)
    fast, e_fast = P.clamped_bounds(doms.splits, propagate=False)
    full, e_full = P.clamped_bounds(doms.splits, propagate=True)
    base, _ = P.clamped_bounds(tuple(a[:1, :0] for a in doms.splits), propagate=True)
    node, idx, side, t = doms.splits
    assert np.all(e_full[e_fast])  # the interval pass finds every empty subdomain the clamps find
    for name in full:
        for i in np.flatnonzero(~e_full):
            assert np.all(fast[name][0][i] <= full[name][0][i] + 1e-12), name
            assert np.all(fast[name][1][i] >= full[name][1][i] - 1e-12), name
        want_lo = np.repeat(base[name][0], len(doms), axis=0).reshape(len(doms), -1)
        want_hi = np.repeat(base[name][1], len(doms), axis=0).reshape(len(doms), -1)
        if name in P.split_nodes:
            k = P.split_nodes.index(name)
            for i, d in zip(*np.nonzero(node == k)):
                if side[i, d] > 0:
                    want_lo[i, idx[i, d]] = max(want_lo[i, idx[i, d]], t[i, d])
                else:
                    want_hi[i, idx[i, d]] = min(want_hi[i, idx[i, d]], t[i, d])
        ok = ~e_fast
        np.testing.assert_array_equal(fast[name][0].reshape(len(doms), -1)[ok], want_lo[ok])
        np.testing.assert_array_equal(fast[name][1].reshape(len(doms), -1)[ok], np.maximum(want_hi, want_lo)[ok])


@pytest.mark.parametrize("seed", range(3))
def test_float32_steps_keep_each_rows_best_and_bound_in_float64(seed):
    """With ``iters = 0`` the only pass is the float64 one (the same bounds as float64
    throughout); with steps, every row ends at least where it started (each row keeps the
    parameters of its own best iterate, whatever the other rows do)."""
    from onnxverify.bounds.optimized import torch_backend
    from onnxverify.verify.beta import bound_domains

    bk = torch_backend()
    rng = np.random.default_rng(seed)
    g = ir_nets.dense_net(seed, sizes=(3, 8, 8, 3), acts=("Relu", "Relu"), scale=1.5)
    lo, hi = -np.ones(3), np.ones(3)
    R = rng.normal(size=(3, 3))
    P, a0 = tb._problem(g, lo, hi, R, np.zeros(3))
    doms = _random_domains(rng, P, B=5, D=2, K=3)
    b64 = bound_domains(bk, P, doms, a0, iters=0, fast_dtype=np.float64)
    b32 = bound_domains(bk, P, doms, a0, iters=0, fast_dtype=np.float32)
    np.testing.assert_array_equal(b32["lower"], b64["lower"])
    opt = bound_domains(bk, P, doms, a0, iters=6, fast_dtype=np.float32)
    live = ~opt["empty"]
    assert np.all(opt["lower"][live] >= b64["lower"][live] - 1e-6 * (1 + np.abs(b64["lower"][live])))


@pytest.mark.parametrize("acts,seed", [(("Relu", "Relu"), 7), (("LeakyRelu", "Relu"), 8),
                                       (("ParamRamp", "Relu"), 7)])
def test_search_per_disjunct_complete_on_tiny_nets(acts, seed):
    """Two disjuncts ``y_0 <= b_0`` or ``y_1 <= b_1``: proved exactly when both thresholds lie
    below their exact minima, a confirmed counterexample when either lies above."""
    from onnxverify.verify.bab import BabSettings, bab_by_disjunct
    from onnxverify.verify.deadline import Decided

    g = ir_nets.dense_net(seed, sizes=(3, 7, 6, 2), acts=acts, eta=0.1, scale=2.0)
    lo, hi = -np.ones(3), np.ones(3)
    R = np.eye(2)
    m = np.array([tb._exact_min(g, lo, hi, R[k]) for k in range(2)])
    delta = 5e-3 * (1 + np.abs(m))
    for shift, expect in (((-1, -1), True), ((-1, 1), "sat"), ((1, -1), "sat")):
        b = m + np.array(shift) * delta
        # the ParamRamp case bounds ~13k subdomains and solves ~5k fully split leaves as LPs
        # (3.4 ms each, 17 of its 25 s alone): a wide deadline, this tests completeness
        s = tb.StubSolver(g, timeout=240.0)
        case = Case(lo, hi, [(R[:1], b[:1]), (R[1:], b[1:])])
        from onnxverify.bounds.optimized import alpha_crown
        from onnxverify.specs.input_sets import Box
        from onnxverify.verify.bab import flat_alpha
        from onnxverify.verify.beta import BabProblem

        res = alpha_crown(g, Box(lo[None], hi[None]), R, iters=5, upper=False)
        P = BabProblem(g, lo, hi, R, b, np.arange(2), res.bounds, "adaptive", np.float64, 1e-9)
        proved, stats = [], {}
        try:
            got = bab_by_disjunct(s, tb._CS(case), P, flat_alpha(P, res.alphas, 2), res.lower, stats,
                                  BabSettings(), proved.append)
        except Decided as e:
            got = e.verdict
            k = int(np.argmax(np.array(shift) > 0))
            assert s.found is not None and s.found[1][k] <= b[k] + 1e-9
        assert got == expect, (acts, seed, shift, m, stats)
        if got is True:
            assert sorted(proved) == [0, 1] and stats["disjuncts_proved"] == 2


def test_children_split_on_several_neurons_cover_every_sign_combination():
    from onnxverify.verify.bab import _children

    K = 2
    parent = {"node": np.array([0]), "idx": np.array([4]), "side": np.array([1]), "t": np.array([0.0]),
              "beta": np.ones((1, K), np.float32), "alpha": np.zeros((1, K, 3), np.float16),
              "open": np.ones(1, bool), "lower": np.array([-1.0, 2.0]),
              "split": [(0, 1, 0.0), (1, 2, 0.5), (1, 3, -0.5)]}
    for depth, n in ((1, 2), (2, 4), (3, 8), (5, 8)):
        kids = _children([parent], K, depth)
        assert len(kids) == n
        d = int(np.log2(n))
        signs = {tuple(k["side"][1:]) for k in kids}
        assert len(signs) == n and all(len(sg) == d for sg in signs)  # each combination once
        for k in kids:
            np.testing.assert_array_equal(k["node"], [0] + [c[0] for c in parent["split"][:d]])
            np.testing.assert_array_equal(k["idx"], [4] + [c[1] for c in parent["split"][:d]])
            np.testing.assert_array_equal(k["t"], [0.0] + [c[2] for c in parent["split"][:d]])
            assert k["beta"].shape == (1 + d, K) and np.all(k["beta"][1:] == 0) and k["beta"][0, 0] == 1
            np.testing.assert_array_equal(k["lower"], parent["lower"])  # the floor of the children's bounds


def _conv_problem(rng):
    """nets.convnet (Mul, Conv, BN, ReLU first: an affine first layer) on a small box, margin rows."""
    import nets
    import onnxverify as ov
    from onnxverify.bounds.optimized import alpha_crown
    from onnxverify.specs.input_sets import Box
    from onnxverify.verify.bab import flat_alpha
    from onnxverify.verify.beta import BabProblem

    model, (lo_, hi_) = nets.ALL_BUILDERS["convnet"](1)
    g = ov.import_model(model)
    x0 = rng.uniform(lo_, hi_, (1,) + tuple(g.input_shape))
    lo, hi = np.clip(x0 - 0.15, lo_, hi_).ravel(), np.clip(x0 + 0.15, lo_, hi_).ravel()
    R = np.asarray(ov.margin_spec(0, 6)).reshape(-1, 6)[:2]
    res = alpha_crown(g, Box(lo.reshape(x0.shape), hi.reshape(x0.shape)), R, iters=3, upper=False)
    P = BabProblem(g, lo, hi, R, np.zeros(2), np.zeros(2, dtype=np.int64), res.bounds, "adaptive", np.float64, 1e-9)
    return P, flat_alpha(P, res.alphas, 2)


@pytest.mark.parametrize("which", ["relu", "leaky", "conv"])
def test_first_layer_trials_equal_a_trial_pass(which):
    """FSB's children split on a first-layer neuron, bounded from the parent's pass alone
    (FirstLayerTrials), get the bound one trial pass with the parent's parameters gives."""
    from onnxverify.bounds.optimized import torch_backend
    from onnxverify.verify.beta import DomainBatch, bound_domains
    from onnxverify.verify.branching import FirstLayerTrials

    rng = np.random.default_rng({"relu": 0, "leaky": 1, "conv": 2}[which])
    if which == "conv":
        P, a0 = _conv_problem(rng)
    else:
        acts = ("Relu", "Relu") if which == "relu" else ("LeakyRelu", "Relu")
        g = ir_nets.dense_net(5, sizes=(4, 12, 10, 3), acts=acts, eta=0.1, scale=1.5)
        P, a0 = tb._problem(g, -np.ones(4), np.ones(4), rng.normal(size=(2, 3)), np.zeros(2))
    first = FirstLayerTrials(P)
    assert list(first.maps) == [0]  # the first layer only
    doms = _random_domains(rng, P, B=5, D=2, K=2)
    bk = torch_backend()
    res = bound_domains(bk, P, doms, a0, iters=0, scores=True, propagate=False, capture=first.capture_names())
    lo, hi = (v.reshape(len(doms), -1) for v in res["bounds"][P.split_nodes[0]])
    gL, gU = res["scores"][P.split_rules[0].name]  # intercept gradients: the neurons the bound sees
    seen = (np.abs(gL) + np.abs(gU)).reshape(len(doms), 2, -1).sum(axis=1) > 1e-9
    cand = [(b, j) for b in range(len(doms)) for j in np.flatnonzero((lo[b] < 0) & (hi[b] > 0) & seen[b])[:6]]
    assert len(cand) >= 5
    bb, jj = (np.array(v) for v in zip(*cand))
    node, idx, side, t = doms.splits
    for s in (1, -1):
        got = first.lower(P, res, bb, np.zeros(len(bb), int), jj, np.full(len(bb), s))
        kids = DomainBatch((np.concatenate([node[bb], np.zeros((len(bb), 1), int)], 1),
                            np.concatenate([idx[bb], jj[:, None]], 1),
                            np.concatenate([side[bb], np.full((len(bb), 1), s)], 1),
                            np.concatenate([t[bb], np.zeros((len(bb), 1))], 1)),
                           np.concatenate([doms.beta[bb], np.zeros((len(bb), 1, 2), np.float32)], 1),
                           res["alpha"][bb], doms.open[bb])
        ref = bound_domains(bk, P, kids, a0, iters=0, sound=False, propagate=False)["lower"]
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
        assert np.any(np.abs(got - res["lower"][bb]) > 1e-6)  # the split changes the bound
