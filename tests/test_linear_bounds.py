"""Linear bound methods: soundness by sampling (every method x strategy x op family,
numpy and torch), Theorem 2 ordering with the tight strategy, Relaxed-CROWN-V monotone in
V, constant strategy == IBP, exactness at eps = 0, memory-limit errors."""
import numpy as np
import pytest
from conftest import BACKENDS, benchmark_networks, needs_bench

import nets
import onnxverify as ov
from onnxverify.onnx.importer import import_model
from onnxverify.onnx.reference import OrtModel

LINEAR = ["lbp", "crown-ibp", "crown-lbp", "crown", "relaxed-crown-1", "relaxed-crown-2"]
STRATEGIES = ["constant", "tight", "adaptive"]
RELU_FAMILY = ["mlp_relu", "mlp_leaky", "nhwc_shape_chain"]


def _net(model):
    return ov.Network(import_model(model), model=model)


def _np(bk_name, a):
    return np.asarray(ov.get_backend(bk_name).to_numpy(a), dtype=np.float64)


def _samples(rng, iset, ort, n):
    """onnxruntime outputs at n points of each batch element's box: (n, B, n_out)."""
    B = iset.lower.shape[0]
    pts = np.stack([nets.sample_box(rng, iset.lower[i], iset.upper[i], n) for i in range(B)], 1).astype(np.float32)
    return np.stack([ort(pts[:, i]) for i in range(B)], 1).reshape(n, B, -1)


def assert_inside(values, lower, upper, slack=1e-5):
    tol = slack * (1 + np.maximum(np.abs(lower), np.abs(upper)))
    assert (values >= lower - tol).all(), f"lower violated by {np.max(lower - values)}"
    assert (values <= upper + tol).all(), f"upper violated by {np.max(values - upper)}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(nets.ALL_BUILDERS))
def test_every_method_and_strategy_is_sound(name, backend):
    rng = np.random.default_rng(5)
    model, (lo, hi) = nets.ALL_BUILDERS[name](1)
    net, ort = _net(model), OrtModel(model)
    x0 = rng.uniform(lo, hi, (2,) + net.input_shape)
    iset = ov.LinfBall(x0, 0.08, clip=(lo, hi))
    ys = _samples(rng, iset, ort, 400)
    labels = net.forward(x0).argmax(1)
    C = ov.margin_spec(labels, net.n_outputs)
    margins = np.einsum("bkn,sbn->sbk", C, ys)
    for method in LINEAR:
        for strategy in STRATEGIES:
            b = net.bounds(iset, method=method, strategy=strategy, backend=backend, intersect_ibp=False)
            assert_inside(ys, _np(backend, b.lower).reshape(1, 2, -1), _np(backend, b.upper).reshape(1, 2, -1))
            s = net.bounds(iset, method=method, strategy=strategy, spec=C, backend=backend, intersect_ibp=False)
            assert_inside(margins, _np(backend, s.lower)[None], _np(backend, s.upper)[None])


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("name", ["mlp_relu", "convnet", "resnet"])
def test_lp_balls_sound(name, p):
    rng = np.random.default_rng(9)
    model, (lo, hi) = nets.ALL_BUILDERS[name](2)
    net, ort = _net(model), OrtModel(model)
    x0 = rng.uniform(lo, hi, net.input_shape)
    pts = nets.sample_lp_ball(rng, x0, 0.4, p, 2000).astype(np.float32)
    ys = ort(pts).reshape(len(pts), -1)
    for method in ["lbp", "crown-ibp", "crown"]:
        b = net.bounds(ov.LpBall(x0, 0.4, p), method=method, strategy="adaptive", intersect_ibp=False)
        assert_inside(ys, b.lower.reshape(1, -1), b.upper.reshape(1, -1))


def _ordered(outer, inner, slack=1e-5):
    """inner interval inside outer, elementwise."""
    tol = slack * (1 + np.abs(outer.lower) + np.abs(outer.upper))
    assert (inner.lower >= outer.lower - tol).all(), np.max(outer.lower - inner.lower)
    assert (inner.upper <= outer.upper + tol).all(), np.max(inner.upper - outer.upper)


def _theorem2(net, iset, spec=None):
    b = {m: net.bounds(iset, method=m, strategy="tight", spec=spec, intersect_ibp=False, dtype=np.float64)
         for m in ["ibp", "lbp", "crown-ibp", "crown-lbp", "crown"]}
    _ordered(b["ibp"], b["lbp"])
    _ordered(b["ibp"], b["crown-ibp"])
    _ordered(b["lbp"], b["crown-lbp"])
    _ordered(b["crown-ibp"], b["crown-lbp"])
    _ordered(b["crown-lbp"], b["crown"])
    return b


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", RELU_FAMILY)
def test_theorem2_ordering_random_networks(name, seed):
    rng = np.random.default_rng(seed)
    model, (lo, hi) = nets.ALL_BUILDERS[name](seed)
    net = _net(model)
    x0 = rng.uniform(lo, hi, (2,) + net.input_shape)
    iset = ov.LinfBall(x0, 0.1, clip=(lo, hi))
    b = _theorem2(net, iset)
    _theorem2(net, iset, spec=ov.margin_spec(net.forward(x0).argmax(1), net.n_outputs))
    assert (b["crown"].upper - b["crown"].lower).mean() < (b["ibp"].upper - b["ibp"].lower).mean()


@needs_bench
@pytest.mark.parametrize("stem", ["mnist-net_256x4", "cifar_base_kw", "resnet_2b", "ACASXU_run2a_1_1_batch_2000"])
def test_theorem2_ordering_benchmark_networks(stem):
    path = next(p for p in benchmark_networks() if p.stem == stem)
    net = ov.load(path)
    x0 = np.random.default_rng(0).uniform(0, 1, net.input_shape)
    _theorem2(net, ov.Box(x0 - 0.003, x0 + 0.003), spec=ov.margin_spec([0], net.n_outputs))


@needs_bench
def test_crown_beats_ibp_on_a_deep_sigmoid_network():
    """eran's ffnnSIGMOID 6x200 at its benchmark eps 0.012 (margins of image 3991, label 6):
    with the steep extreme tangent on intervals that straddle 0, CROWN's margins were 3-10x
    looser than IBP's (worst -383 vs -42); with either strategy's tangent every margin is far
    tighter than IBP's (``adaptive``: all but one positive), and both stay sound on samples."""
    from onnxverify.specs.vnnlib import parse_vnnlib

    path = next(p for p in benchmark_networks() if p.stem == "ffnnSIGMOID__Point_6x200")
    net = ov.load(path)
    case = parse_vnnlib(str(path.parents[1] / "vnnlib/mnist/mnist_spec_idx_3991_eps_0.01200.vnnlib")).cases[0]
    shape = (1,) + tuple(net.input_shape)
    iset = ov.Box(case.x_lower.reshape(shape), case.x_upper.reshape(shape))
    spec = ov.margin_spec([6], net.n_outputs)
    ibp = net.bounds(iset, method="ibp", spec=spec, dtype=np.float64)
    rng = np.random.default_rng(0)
    pts = nets.sample_box(rng, case.x_lower, case.x_upper, 500)
    ys = net.forward(pts.reshape((-1,) + tuple(net.input_shape))) @ np.asarray(spec).reshape(-1, net.n_outputs).T
    for strategy in ("adaptive", "tight"):
        crown = net.bounds(iset, method="crown", spec=spec, strategy=strategy, dtype=np.float64, intersect_ibp=False)
        assert np.all(crown.lower > ibp.lower + 0.5 * np.abs(ibp.lower)), strategy
        assert np.all(ys >= crown.lower.reshape(1, -1) - 1e-6), strategy
        if strategy == "adaptive":
            assert np.sum(crown.lower > 0) >= 8


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh"])
def test_s_shaped_tight_tangent_minimises_the_gap_area(op):
    """On intervals that straddle 0, the tight strategy's upper line is the valid tangent with the
    least area between it and f (checked against every tangent of a grid over the valid
    range), and it lies above f."""
    from onnxverify.ir import Node
    from onnxverify.ops import rule_of
    from onnxverify.ops.sigmoid import s_tangent_range

    bk = ov.get_backend("numpy")
    node = Node("s", op, ("x",), shape=(1,))
    rule = rule_of(node)
    f = lambda z: np.asarray(rule.forward(bk, node, z))  # noqa: E731
    df = lambda z: np.asarray(rule.df(bk, z))  # noqa: E731
    rng = np.random.default_rng(0)
    for _ in range(40):
        l, u = -rng.uniform(0.1, 8), rng.uniform(0.1, 8)
        L, U = np.array([[l]]), np.array([[u]])
        aL, bL, aU, bU = (float(np.ravel(v)[0]) for v in rule.lines(bk, node, L, U, "tight"))
        z = np.linspace(l, u, 4001)
        assert np.all(aU * z + bU >= f(z) - 1e-9) and np.all(aL * z + bL <= f(z) + 1e-9)
        d_lo, d_hi, ok = (float(np.ravel(v)[0]) for v in s_tangent_range(bk, f, df, L, U))
        if not ok:
            continue
        area = lambda d: np.mean(f(d) + df(d) * (z - d) - f(z))  # noqa: E731
        best = min(area(d) for d in np.linspace(d_lo, d_hi, 201))
        assert np.mean(aU * z + bU - f(z)) <= best + 1e-6


@pytest.mark.parametrize("name", ["mlp_relu", "mlp_leaky"])
def test_relaxed_crown_tightens_towards_crown(name):
    model, (lo, hi) = nets.ALL_BUILDERS[name](3)
    net = _net(model)
    x0 = np.random.default_rng(3).uniform(lo, hi, net.input_shape)
    iset = ov.LinfBall(x0, 0.15, clip=(lo, hi))
    run = lambda m: net.bounds(iset, method=m, strategy="tight", intersect_ibp=False, dtype=np.float64)  # noqa: E731
    chain = [run(f"relaxed-crown-{v}") for v in (1, 2, 3)] + [run("crown")]
    for outer, inner in zip(chain, chain[1:]):
        _ordered(outer, inner)
    np.testing.assert_allclose(chain[-2].lower, chain[-1].lower, atol=1e-9)  # V >= depth: CROWN itself
    np.testing.assert_allclose(chain[0].lower, run("lbp").lower, atol=1e-9)  # LBP == Relaxed-CROWN-1


@pytest.mark.parametrize("method", LINEAR)
@pytest.mark.parametrize("name", ["mlp_relu", "mlp_sigmoid_tanh", "mlp_leaky", "resnet", "nhwc_shape_chain"])
def test_constant_strategy_reproduces_ibp(name, method):
    model, (lo, hi) = nets.ALL_BUILDERS[name](0)
    net = _net(model)
    x0 = np.random.default_rng(0).uniform(lo, hi, (2,) + net.input_shape)
    iset = ov.LinfBall(x0, 0.1, clip=(lo, hi))
    C = ov.margin_spec([0, 1], net.n_outputs)
    ibp = net.bounds(iset, method="ibp", spec=C, dtype=np.float64)
    lin = net.bounds(iset, method=method, strategy="constant", spec=C, intersect_ibp=False, dtype=np.float64)
    np.testing.assert_allclose(lin.lower, ibp.lower, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lin.upper, ibp.upper, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(nets.ALL_BUILDERS))
def test_eps_zero_is_exact(name, backend):
    model, (lo, hi) = nets.ALL_BUILDERS[name](4)
    net = _net(model)
    x0 = np.random.default_rng(4).uniform(lo, hi, net.input_shape)
    y = net.forward(x0)
    for method in ["ibp"] + LINEAR:
        b = net.bounds(ov.LinfBall(x0, 0.0), method=method, backend=backend, intersect_ibp=False)
        np.testing.assert_allclose(_np(backend, b.lower), y, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(_np(backend, b.upper), y, rtol=1e-4, atol=1e-5)


@needs_bench
@pytest.mark.parametrize("path", [p for p in benchmark_networks() if "acasxu" not in p.name or p.name.endswith("1_1_batch_2000.onnx")],
                         ids=lambda p: p.name)
def test_all_methods_run_and_are_sound_on_benchmark_networks(path):
    rng = np.random.default_rng(21)
    net, ort = ov.load(path), OrtModel(path)
    x0 = rng.uniform(0, 1, net.input_shape)
    eps = 0.001
    pts = nets.sample_box(rng, x0 - eps, x0 + eps, 100).astype(np.float32)
    ys = ort(pts).reshape(len(pts), -1)
    for method in ["lbp", "crown-ibp", "crown-lbp", "crown"]:
        b = net.bounds(ov.Box(x0 - eps, x0 + eps), method=method, intersect_ibp=False)
        assert_inside(ys, b.lower.reshape(1, -1), b.upper.reshape(1, -1), slack=1e-4)


def test_memory_limit_error_is_clear():
    model, (lo, hi) = nets.convnet(0)
    net = _net(model)
    iset = ov.LinfBall(np.full(net.input_shape, 0.5), 0.1)
    with pytest.raises(ov.MemoryLimitError, match="memory limit"):
        net.bounds(iset, method="lbp", max_memory=10_000)
    with pytest.raises(ov.MemoryLimitError, match="memory limit"):
        net.bounds(iset, method="crown", max_memory=100)


def test_chunked_backward_equals_unchunked():
    model, (lo, hi) = nets.convnet(1)
    net = _net(model)
    iset = ov.LinfBall(np.random.default_rng(1).uniform(0, 1, (2,) + net.input_shape), 0.1)
    a = net.bounds(iset, method="crown", intersect_ibp=False)
    b = net.bounds(iset, method="crown", intersect_ibp=False, max_memory=400_000)
    np.testing.assert_allclose(a.lower, b.lower, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.upper, b.upper, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["convnet", "resnet"])
def test_windowed_backward_matches_dense(name, monkeypatch):
    """CROWN's tiled backward passes (receptive-field windows, residual unions, fallback to
    dense at other ops) give the dense passes' bounds, and stay sound."""
    import onnxverify.bounds.passes as M

    rng = np.random.default_rng(8)
    model, (lo, hi) = nets.ALL_BUILDERS[name](2)
    net, ort = _net(model), OrtModel(model)
    iset = ov.LinfBall(rng.uniform(lo, hi, (2,) + net.input_shape), 0.1, clip=(lo, hi))
    monkeypatch.setattr(M, "TILE_ROWS", 10**9)
    monkeypatch.setattr(M, "PATCHES", False)  # the tiles, not the patch passes (tests/test_patches.py)
    dense = net.bounds(iset, method="crown", strategy="adaptive", intersect_ibp=False, dtype=np.float64)
    calls = []
    original = M.backward_tiles
    monkeypatch.setattr(M, "backward_tiles", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(M, "TILE_ROWS", 2)
    tiled = net.bounds(iset, method="crown", strategy="adaptive", intersect_ibp=False, dtype=np.float64)
    assert calls, "the tiled path was not taken"
    np.testing.assert_allclose(tiled.lower, dense.lower, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(tiled.upper, dense.upper, rtol=1e-9, atol=1e-9)
    ys = _samples(rng, iset, ort, 300)
    assert_inside(ys, tiled.lower.reshape(1, 2, -1), tiled.upper.reshape(1, 2, -1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("blocks", [False, True])
def test_line_step_is_the_formula(backend, per_row, blocks, monkeypatch):
    """The elementwise backward step (``Backend.through_lines``; NumPy's in cache-sized blocks
    on two threads when ``blocks``) equals ``pos(A) lo + neg(A) hi`` and its intercept sum,
    written out in float64, for both passes, shared and per-row lines, zero lower intercepts
    (ReLU's) among them, and leaves ``A`` unchanged."""
    from onnxverify.backend import blocked, get_backend, threads
    from onnxverify.ops.generic import ElementwiseRule

    if blocks:
        monkeypatch.setattr(blocked, "BLOCKED_MIN_BYTES", 0)
        monkeypatch.setattr(blocked, "BLOCK_BYTES", 3 * 48 * 8)  # 3 rows of 48 float64 per block
        monkeypatch.setattr(threads, "current", lambda: 2)
    bk = get_backend(backend)
    rng = np.random.default_rng(4)
    B, K, shape = 2, 7, (3, 4, 4)
    t = lambda a: bk.asarray(a, dtype=np.float64)  # noqa: E731
    raw = [rng.normal(size=(B, K) + shape if per_row else (B,) + shape) for _ in range(4)]
    raw[1][...] = 0.0  # a lower line through 0: the kernel skips its intercept products
    AL, AU = rng.normal(size=(B, K) + shape), rng.normal(size=(B, K) + shape)
    (got,), biases = ElementwiseRule._through_lines(bk, [t(v) for v in raw], t(AL), t(AU), None)
    aL, bL, aU, bU = (v if per_row else v[:, None] for v in raw)
    for s, A in enumerate((AL, AU)):
        lo_a, lo_b, hi_a, hi_b = (aU, bU, aL, bL) if s else (aL, bL, aU, bU)
        pos, neg = np.maximum(A, 0), np.minimum(A, 0)
        want = pos * lo_a + neg * hi_a
        bias = (pos * lo_b + neg * hi_b).reshape(B, K, -1).sum(axis=2)
        np.testing.assert_allclose(np.asarray(bk.to_numpy(got[s])), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(bk.to_numpy(biases[s])), bias, rtol=1e-12, atol=1e-12)
        assert np.abs(want).max() > 0 and np.abs(bias).max() > 0


def test_blocks_cover_every_entry_once():
    """The blocks of the NumPy kernels tile an ``(n0, n1)`` index space exactly."""
    from onnxverify.backend.blocked import blocks

    for n0, n1, unit in [(1, 100, 1 << 14), (50, 3, 1 << 10), (7, 9, 1 << 21), (3, 1, 8)]:
        hits = np.zeros((n0, n1), int)
        for s0, s1 in blocks(n0, n1, unit):
            hits[s0, s1] += 1
        assert (hits == 1).all(), (n0, n1, unit)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("blocks", [False, True])
def test_fused_and_split_dot_are_their_formulas(backend, blocks, monkeypatch):
    """``Backend.fused`` (a chain of elementwise operations; on NumPy in blocks over two
    threads, arrays broadcast along either blocked axis) and ``Backend.split_dot`` (Hölder's
    box bound) equal the whole-array float64 formulas."""
    from onnxverify.backend import blocked, get_backend, threads

    if blocks:
        monkeypatch.setattr(blocked, "BLOCKED_MIN_BYTES", 0)
        monkeypatch.setattr(blocked, "BLOCK_BYTES", 2 * 40 * 8)
        monkeypatch.setattr(threads, "current", lambda: 2)
    bk = get_backend(backend)
    rng = np.random.default_rng(7)
    t = lambda a: bk.asarray(a, dtype=np.float64)  # noqa: E731
    L, U = rng.normal(size=(3, 9, 5, 8)), rng.normal(size=(3, 9, 5, 8))
    a, c = rng.normal(size=(3, 1, 5, 8)), rng.normal(size=(1, 9, 5, 8))
    lo, hi = bk.fused(lambda a, c, L, U: (a * L + c * U, (U - L) / 2), [t(a), t(c), t(L), t(U)], 2)
    np.testing.assert_allclose(np.asarray(bk.to_numpy(lo)), a * L + c * U, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(bk.to_numpy(hi)), (U - L) / 2, rtol=1e-13, atol=1e-13)
    (one,) = bk.fused(lambda L: L * 3, [t(L)])
    np.testing.assert_allclose(np.asarray(bk.to_numpy(one)), L * 3, rtol=1e-13)
    A, p, n = rng.normal(size=(3, 11, 40)), rng.normal(size=(3, 40)), rng.normal(size=(3, 40))
    want = (np.maximum(A, 0) * p[:, None] + np.minimum(A, 0) * n[:, None]).sum(axis=2)
    got = bk.split_dot(t(A), t(p), t(n))
    np.testing.assert_allclose(np.asarray(bk.to_numpy(got)), want, rtol=1e-12, atol=1e-12)

