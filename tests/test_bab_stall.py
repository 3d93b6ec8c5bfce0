"""The stall rule of branch and bound (a subdomain that stops improving goes to the exact MILP
with its splits) and the flat-score fallback keep the search sound and complete: a subdomain's
MILP verdict matches brute-force enumeration of its activation patterns, and the search with
the MILP forced on every subdomain still decides tiny nets exactly."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import ir_nets
import test_bab as tb
import test_bab_fast as tf
from conftest import torch_available
from onnxverify.specs.vnnlib import Case

pytestmark = [pytest.mark.usefixtures("one_blas_thread"),
              pytest.mark.skipif(not torch_available(), reason="branch and bound needs torch")]


def _layers(g):
    """``[(W, b, slope of the negative side or None for the output layer)]`` of a dense net."""
    out = []
    for n in g.computed:
        if n.op == "Linear":
            out.append([np.asarray(n.params["weight"], np.float64), np.asarray(n.params["bias"], np.float64), None])
        elif n.op in ("Relu", "LeakyRelu"):
            out[-1][2] = float(n.attrs.get("alpha", 0.0)) if n.op == "LeakyRelu" else 0.0
    return out


def _enum_min(g, lo, hi, r, cons):
    """Exact ``min r @ y`` over the box and the constraints ``cons = [(layer, neuron, side, t)]``
    (``side (z - t) >= 0`` on pre-activation ``z`` of hidden layer ``layer``), by one LP per
    activation pattern of the hidden neurons (the net is affine on each); ``inf`` if empty."""
    from scipy.optimize import linprog

    layers = _layers(g)
    sizes = [len(b) for W, b, s in layers if s is not None]
    best = np.inf
    for pat in itertools.product((0, 1), repeat=sum(sizes)):
        A_ub, b_ub = [], []
        M, c = np.eye(len(lo)), np.zeros(len(lo))  # current value = M x + c
        k = 0
        for li, (W, b, neg) in enumerate(layers):
            zM, zc = W @ M, W @ c + b
            if neg is None:
                break
            on = np.array(pat[k:k + len(b)], dtype=bool)
            k += len(b)
            sgn = np.where(on, -1.0, 1.0)  # on: z >= 0 (-z <= 0); off: z <= 0
            A_ub.append(sgn[:, None] * zM)
            b_ub.append(-sgn * zc)
            for (cl, j, side, t) in cons:
                if cl == li:  # side (zM_j x + zc_j - t) >= 0  <=>  -side zM_j x <= side (zc_j - t)
                    A_ub.append(-side * zM[j:j + 1])
                    b_ub.append(np.array([side * (zc[j] - t)]))
            slope = np.where(on, 1.0, neg)
            M, c = slope[:, None] * zM, slope * zc
        obj = r @ zM
        res = linprog(obj, A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub), bounds=list(zip(lo, hi)),
                      method="highs")
        if res.status == 0:
            best = min(best, float(res.fun + r @ zc))
    return best


@pytest.mark.parametrize("propagate", [False, True])
@pytest.mark.parametrize("acts,seed", [(("Relu", "Relu"), 0), (("Relu", "Relu"), 1), (("LeakyRelu", "Relu"), 2)])
def test_subdomain_milp_with_splits_matches_enumeration(acts, seed, propagate):
    """For random subdomains (splits at random thresholds), ``solve_leaf`` on the clamped
    bounds proves the threshold just below the exact subdomain minimum and finds a
    counterexample (confirmed on the exact forward) just above it."""
    from onnxverify.verify.milp import encode, solve_disjunct, solve_leaf

    rng = np.random.default_rng(seed)
    g = ir_nets.dense_net(seed, sizes=(3, 5, 4, 1), acts=acts, eta=0.1, scale=2.0)
    lo, hi = -np.ones(3), np.ones(3)
    r = np.ones(1)
    P, _ = tb._problem(g, lo, hi, r[None], np.zeros(1))
    doms = tf._random_domains(rng, P, B=6, D=2, K=1)
    node, idx, side, t = doms.splits
    bounds, empty = P.clamped_bounds(doms.splits, propagate)
    layer_of = {name: k for k, name in enumerate(P.split_nodes)}
    checked = 0
    for i in range(len(doms)):
        cons = [(layer_of[P.split_nodes[node[i, d]]], int(idx[i, d]), int(side[i, d]), float(t[i, d]))
                for d in range(node.shape[1])]
        m = _enum_min(g, lo, hi, r, cons)
        if empty[i]:  # the search drops these before any MILP
            assert m == np.inf
            continue
        one = {n: (a[i:i + 1], b[i:i + 1]) for n, (a, b) in bounds.items()}
        if m == np.inf:  # empty through the network: the exact MILP is infeasible
            enc = encode(g, one, lo, hi)
            assert solve_disjunct(enc, enc.var[g.output], r[None], np.zeros(1), 10.0)[0] == np.inf
            continue
        delta = 1e-3 * (1 + abs(m))
        enc = encode(g, one, lo, hi)  # exact: its optimum is the subdomain's minimum
        lower, value, _ = solve_disjunct(enc, enc.var[g.output], r[None], np.zeros(1), 10.0)
        assert abs(value - m) <= 1e-6 * (1 + abs(m))  # HiGHS's optimum is the enumeration's
        assert m - 2e-4 * (1 + abs(m)) <= lower <= m + 1e-9 * (1 + abs(m))  # its dual bound: within its gap
        for b, expect in ((m - delta, "proved"), (m + delta, "sat")):
            P_b, _ = tb._problem(g, lo, hi, r[None], np.array([b]))
            case = Case(lo, hi, [(r[None], np.array([b]))])
            s = tb.StubSolver(g)
            verdict, x = solve_leaf(s, P_b, one, {"open": np.ones(1, bool)}, case, 10.0)
            # pruned rows make it a relaxation: it may find a counterexample outside the
            # subdomain (a real one: confirmed on the exact forward), never a wrong proof
            assert verdict == expect or verdict == "sat", (seed, i, b, m, cons)
            if verdict == "sat":
                assert s.found is not None and s.found[1][0] <= b
        checked += 1
    assert checked >= 2


def _bottleneck_net(seed):
    """``3 -> 6 -> ReLU -> 1 -> ReLU -> 4 -> ReLU -> 1``: every path to the first layer runs
    through one neuron (the shape that stalled mnist_fc 256x6 prop_7)."""
    return ir_nets.dense_net(seed, sizes=(3, 6, 1, 4, 1), acts=("Relu", "Relu", "Relu"), scale=2.0)


CASES = [(("Relu", "Relu"), 7, None), (("LeakyRelu", "Relu"), 7, None), (("ParamRamp", "ParamRamp"), 8, None),
         (("Relu", "Relu", "Relu"), 0, "bottleneck"), (("Relu", "Relu", "Relu"), 3, "bottleneck")]


@pytest.mark.parametrize("acts,seed,kind", CASES)
@pytest.mark.parametrize("mode", ["stall", "depth"])
def test_search_with_milp_on_subdomains_complete_on_tiny_nets(acts, seed, kind, mode):
    """Thresholds just below / above the exact minimum: ``True`` / a confirmed counterexample,
    with the MILP tried on subdomains (every subdomain with a split in ``depth`` mode)."""
    from onnxverify.verify.bab import BabSettings, neuron_bab
    from onnxverify.verify.deadline import Decided

    g = _bottleneck_net(seed) if kind else ir_nets.dense_net(seed, sizes=(3, 7, 6, 1), acts=acts, eta=0.1, scale=2.0)
    lo, hi = -np.ones(3), np.ones(3)
    r = np.ones(1)
    m = tb._exact_min(g, lo, hi, r)
    delta = 5e-3 * (1 + abs(m))
    cfg = BabSettings()
    cfg.milp_share, cfg.milp_s, cfg.flat_beta = 1.0, 5.0, 1.0
    if mode == "stall":
        cfg.stall_k = 1
    else:
        cfg.milp_depth = 1
    tried = flat = 0
    for b, expect in ((m - delta, True), (m + delta, "sat")):
        s = tb.StubSolver(g)
        case = Case(lo, hi, [(r[None], np.array([b]))])
        P, a0 = tb._problem(g, lo, hi, r[None], np.array([b]))
        stats = {}
        try:
            got = neuron_bab(s, tb._CS(case), P, a0, np.ones(1, bool), stats, cfg)
        except Decided as e:
            got = e.verdict
            assert s.found is not None and s.found[1][0] <= b
        assert got == expect, (acts, seed, mode, b, m, stats)
        tried, flat = tried + stats["milp_tried"], flat + stats["flat"]
    if mode == "depth":
        assert tried > 0  # the rule ran (in stall mode only where a bound stopped improving)
    if kind:
        assert flat > 0  # and the flat-score fallback


def test_flat_scores_are_rescored_by_the_split_constraints():
    """A subdomain whose candidates all score ~0 is detected and gets scores from its split
    multipliers; the rest keep theirs."""
    from onnxverify.verify.bab import BabSettings, _Search
    from onnxverify.verify.branching import FLAT, TIE

    cfg = BabSettings()
    cfg.flat_beta = 1.0
    srch = _Search.__new__(_Search)
    srch.cfg = cfg

    class D:
        splits = (np.array([[0], [0], [-1]]), None, None, None)

        def __len__(self):
            return 3

    score = np.array([[0.5 * TIE, 0.1 * TIE], [1.0, 0.2], [0.3 * TIE, 0.0]])
    valid = np.ones((3, 2), dtype=bool)
    np.testing.assert_array_equal(srch._flat(D(), score, valid), [True, False, False])  # the root (no split) keeps its
    assert FLAT > TIE
    cfg.flat_beta = 0.0
    assert not srch._flat(D(), score, valid).any()
