"""ParamRamp in the verifier: bounding lines, soundness of every method, Theorem 2, round trip,
bad input (issue 3). Random ParamRamp nets are built with onnx.helper and the ONNX function
of :mod:`onnxverify.converters` so that stock onnxruntime is the reference."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxverify as ov
from onnxverify.backend import get_backend
from onnxverify.cli import main
from onnxverify.converters import attach_paramramp_function, make_paramramp_node
from onnxverify.onnx.reference import OrtModel
from onnxverify.ops.paramramp import paramramp_lines
from onnxverify.ops.relu import leaky_relu_lines
from onnxverify.bounds.status import PARAMRAMP_STATUSES, neuron_status, paramramp_status, relu_status

BK = get_backend("numpy")
STRATEGIES = ("constant", "tight", "adaptive")
METHODS = ("ibp", "lbp", "crown-ibp", "crown-lbp", "crown", "relaxed-crown-2")
ETAS = (0.0, 0.01, 0.3)


# many small matrix products: one BLAS/torch thread keeps them fast on a busy machine
pytestmark = pytest.mark.usefixtures("one_blas_thread")


# =====================================================================================
# random ParamRamp networks (onnx.helper + the ONNX function)
# =====================================================================================
class _Net:
    """Tiny ONNX graph builder: every ParamRamp reads an initializer R."""

    def __init__(self, seed, input_shape):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0
        self.input_shape = tuple(input_shape)

    def _name(self, p):
        self.k += 1
        return f"{p}{self.k}"

    def const(self, a, p="c"):
        n = self._name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(a, np.float32), n))
        return n

    def op(self, op, inputs, **attrs):
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self._name("n_" + op), **attrs))
        return out

    def ramp_r(self, shape):
        """Bend points spanning every regime: below the 1e-4 clamp, tiny, O(0.1), O(1), large."""
        rng = self.rng
        kind = rng.integers(0, 6, size=shape)
        r = np.choose(kind, [np.full(shape, 1e-6), np.full(shape, -0.3), rng.uniform(0.01, 0.1, shape),
                             rng.uniform(0.1, 0.6, shape), rng.uniform(0.6, 2.0, shape), rng.uniform(2.0, 5.0, shape)])
        return r.astype(np.float32)

    def ramp(self, x, shape, eta, r_shape=None):
        r = self.ramp_r(r_shape or shape)
        out = self._name("pr")
        self.nodes.append(make_paramramp_node(x, self.const(r, "r"), out, eta=eta, name=self._name("n_pr")))
        return out

    def gemm(self, x, n_in, n_out):
        w = self.rng.normal(0, 1.5 / np.sqrt(n_in), (n_out, n_in))
        b = self.rng.normal(0, 0.5, n_out)
        return self.op("Gemm", [x, self.const(w), self.const(b)], transB=1)

    def conv(self, x, c_in, c_out, stride=1):
        w = self.rng.normal(0, 1.5 / np.sqrt(9 * c_in), (c_out, c_in, 3, 3))
        b = self.rng.normal(0, 0.5, c_out)
        return self.op("Conv", [x, self.const(w), self.const(b)], kernel_shape=[3, 3], strides=[stride, stride],
                       pads=[1, 1, 1, 1])

    def model(self, out, out_dims, attach=True):
        g = helper.make_graph(self.nodes, "paramramp_net",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *self.input_shape])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", *out_dims])], self.inits)
        # ir_version 8: onnxruntime 1.31 rejects the default IR version of onnx 1.2x
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        if attach:
            attach_paramramp_function(m)
            onnx.checker.check_model(m, full_check=True)
        return m


def paramramp_mlp(seed=0, eta=0.01, sizes=(6, 16, 12, 4), attach=True):
    b = _Net(seed, (sizes[0],))
    x = "input"
    for k in range(len(sizes) - 1):
        x = b.gemm(x, sizes[k], sizes[k + 1])
        if k < len(sizes) - 2:
            x = b.ramp(x, (sizes[k + 1],), eta)
    return b.model(x, (sizes[-1],), attach)


def paramramp_conv(seed=0, eta=0.01, attach=True):
    """(2, 6, 6) -> conv 4 -> ParamRamp (per neuron R) -> conv 4 /2 -> ParamRamp (per-channel
    R (4, 1, 1)) -> flatten -> Gemm 3."""
    b = _Net(seed, (2, 6, 6))
    x = b.conv("input", 2, 4)
    x = b.ramp(x, (4, 6, 6), eta)
    x = b.conv(x, 4, 4, stride=2)
    x = b.ramp(x, (4, 3, 3), eta, r_shape=(4, 1, 1))
    x = b.op("Flatten", [x], axis=1)
    x = b.gemm(x, 36, 3)
    return b.model(x, (3,), attach)


ARCHS = {"mlp": paramramp_mlp, "conv": paramramp_conv}


def _x0(model, seed, batch=2):
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    return np.random.default_rng(seed).uniform(0, 1, (batch,) + shape)


def _samples(lo, hi, n_random, rng, n_corners_max=256):
    """Points of the box [lo, hi] (one sample's bounds): the centre, corners (all of them when
    few), uniform points. -> (P, *shape)"""
    lo, hi = np.asarray(lo).reshape(-1), np.asarray(hi).reshape(-1)
    n = lo.size
    if 2 ** n <= n_corners_max:
        bits = np.array(list(itertools.product((0.0, 1.0), repeat=n)))
    else:
        bits = rng.integers(0, 2, (n_corners_max, n)).astype(float)
    corners = lo + bits * (hi - lo)
    inside = lo + rng.uniform(0, 1, (n_random, n)) * (hi - lo)
    return np.concatenate([((lo + hi) / 2)[None], corners, inside])


def _sample_outputs(model, iset, input_shape, rng, n_random=400):
    """onnxruntime outputs at points of every batch element's box: (B, P, n_out) float64."""
    ort = OrtModel(model)
    lo, hi = iset.box()
    out = []
    for b in range(lo.shape[0]):
        pts = _samples(lo[b], hi[b], n_random, rng).reshape((-1,) + tuple(input_shape)).astype(np.float32)
        # points must stay in the box after the cast to float32
        pts = np.clip(pts, np.float32(lo[b]), np.float32(hi[b]))
        out.append(ort(pts).reshape(len(pts), -1).astype(np.float64))
    return np.stack(out)


def _tol(a):
    return 1e-5 * np.maximum(1.0, np.abs(a))


def _assert_inside(y, lower, upper, what):
    """y (B, P, K) inside [lower, upper] (B, K) with 1e-5 relative slack."""
    lo, hi = lower[:, None, :], upper[:, None, :]
    bad_lo = y < lo - _tol(lo)
    bad_hi = y > hi + _tol(hi)
    assert not bad_lo.any(), f"{what}: sample below the lower bound by {float((lo - y).max()):.3g}"
    assert not bad_hi.any(), f"{what}: sample above the upper bound by {float((y - hi).max()):.3g}"


# =====================================================================================
# bounding lines
# =====================================================================================
def _f(z, r, eta):
    return eta * z + (1 - eta) * np.minimum(np.maximum(z, 0), r)


def _intervals(status: str, n: int, rng, min_width=1e-5):
    """n intervals (l, u) and bend points r (>= 1e-4) of the given ParamRamp status,
    including edge cases (touching 0 or r, zero width where the status allows it)."""
    U = lambda a, b: rng.uniform(a, b, n)  # noqa: E731
    r = np.where(rng.uniform(size=n) < 0.1, 1e-4, U(0.01, 3.0))
    if status == "left dead":
        u = -U(0, 2)
        u[:5] = 0.0
        l = u - U(0, 3)
        l[5:10] = u[5:10]  # zero width
    elif status == "left unstable":
        l, u = -U(min_width, 3), U(min_width, 1) * r
        u[:5] = r[:5]
    elif status == "alive":
        l = U(0, 1) * r
        l[:5] = 0.0
        u = l + U(0, 1) * (r - l)
        u[5:10] = r[5:10]
        u[10:15] = l[10:15]  # zero width
    elif status == "right unstable":
        l = U(0, 1) * (r - min_width)
        l[:5] = 0.0
        u = r + U(min_width, 3)
    elif status == "right dead":
        l = r + U(0, 2)
        l[:5] = r[:5]
        u = l + U(0, 3)
        u[5:10] = l[5:10]  # zero width
    elif status == "unstable":
        l, u = -U(min_width, 3), r + U(min_width, 3)
    else:
        raise ValueError(status)
    return l, u, r


def _grid(l, u, m=257):
    t = np.linspace(0.0, 1.0, m)
    return l[:, None] + t[None, :] * (u - l)[:, None]


@pytest.mark.parametrize("status", PARAMRAMP_STATUSES)
def test_status_generator_and_classifier_agree(status):
    l, u, r = _intervals(status, 300, np.random.default_rng(0))
    codes = paramramp_status(l, u, r)
    assert (codes == PARAMRAMP_STATUSES.index(status)).all()


@pytest.mark.parametrize("eta", ETAS + (1.0,))
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("status", PARAMRAMP_STATUSES)
def test_paramramp_lines_bound_f_on_grid(status, strategy, eta):
    rng = np.random.default_rng(hash((status, strategy, eta)) % 2**32)
    l, u, r = _intervals(status, 300, rng)
    aL, bL, aU, bU = paramramp_lines(BK, l, u, r, eta, strategy)
    assert (aL >= 0).all() and (aU >= 0).all(), "slopes must be >= 0 (the forward pass relies on it)"
    z = _grid(l, u)
    fz = _f(z, r[:, None], eta)
    tol = 1e-9 * (1 + np.abs(fz))
    low = aL[:, None] * z + bL[:, None]
    up = aU[:, None] * z + bU[:, None]
    assert (low <= fz + tol).all(), f"lower line above f by {float((low - fz).max()):.3g}"
    assert (fz <= up + tol).all(), f"upper line below f by {float((fz - up).max()):.3g}"


@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("status", PARAMRAMP_STATUSES)
def test_tight_lines_never_looser_than_constant(status, eta):
    l, u, r = _intervals(status, 300, np.random.default_rng(7))
    cL, cbL, cU, cbU = paramramp_lines(BK, l, u, r, eta, "constant")
    np.testing.assert_allclose(cL, 0)
    np.testing.assert_allclose(cU, 0)
    np.testing.assert_allclose(cbL, _f(l, r, eta))  # IBP's interval
    np.testing.assert_allclose(cbU, _f(u, r, eta))
    aL, bL, aU, bU = paramramp_lines(BK, l, u, r, eta, "tight")
    z = _grid(l, u)
    tol = 1e-9 * (1 + np.abs(z))
    # pointwise on the grid
    assert (aL[:, None] * z + bL[:, None] >= cbL[:, None] - tol).all()
    assert (aU[:, None] * z + bU[:, None] <= cbU[:, None] + tol).all()
    # as intervals: the ranges of the lines over [l, u] lie inside [f(l), f(u)]
    t = 1e-9 * (1 + np.abs(cbL) + np.abs(cbU))
    assert (np.minimum(aL * l + bL, aL * u + bL) >= cbL - t).all()
    assert (np.maximum(aU * l + bU, aU * u + bU) <= cbU + t).all()


def test_tight_lines_follow_the_paper_table():
    """PAPER_NOTES §1, tight strategy, one interval per status (eta = 0.1, r = 1, b = 0.9)."""
    eta, r = 0.1, 1.0
    cases = {  # (l, u): (lower slope, lower intercept, upper slope, upper intercept)
        (-2.0, -1.0): (eta, 0.0, eta, 0.0),  # left dead: eta z, eta z
        (-1.0, 0.5): (eta, 0.0, (0.5 + 0.1) / 1.5, 0.5 - 0.4 * 0.5),  # left unstable: eta z, chord
        (0.2, 0.8): (1.0, 0.0, 1.0, 0.0),  # alive: z, z
        (0.5, 2.0): ((1.1 - 0.5) / 1.5, 1.1 - 0.4 * 2.0, eta, 0.9),  # right unstable: chord, eta z + b
        (1.5, 3.0): (eta, 0.9, eta, 0.9),  # right dead
        (-1.0, 2.0): (eta, 0.0, eta, 0.9),  # unstable: eta z, eta z + b
    }
    l = np.array([k[0] for k in cases])
    u = np.array([k[1] for k in cases])
    got = np.stack(paramramp_lines(BK, l, u, np.full(len(l), r), eta, "tight"), axis=1)
    np.testing.assert_allclose(got, np.array(list(cases.values())), atol=1e-12)


def test_adaptive_lines_pick_the_larger_side():
    eta, r = 0.1, 1.0
    # left unstable: lower z if u > -l else eta z
    aL, _, _, _ = paramramp_lines(BK, np.array([-0.2, -0.8]), np.array([0.5, 0.5]), np.ones(2), eta, "adaptive")
    np.testing.assert_allclose(aL, [1.0, eta])
    # right unstable: upper eta z + b if u - r > r - l else z
    _, _, aU, bU = paramramp_lines(BK, np.array([0.5, 0.5]), np.array([2.0, 1.2]), np.ones(2), eta, "adaptive")
    np.testing.assert_allclose(aU, [eta, 1.0])
    np.testing.assert_allclose(bU, [0.9, 0.0])
    # unstable: upper through (l, eta l), (r, r) when u - r <= r - l; lower through (0,0), (u, f(u)) when u > -l
    l, u = np.array([-1.0, -3.0, -5.0]), np.array([1.5, 6.0, 1.5])
    aL, bL, aU, bU = paramramp_lines(BK, l, u, np.ones(3), eta, "adaptive")
    s_lr = (r - eta * l) / (r - l)
    np.testing.assert_allclose([aU[0], bU[0]], [s_lr[0], r - s_lr[0] * r])  # u - r <= r - l
    np.testing.assert_allclose([aU[1], bU[1]], [eta, 0.9])  # u - r > r - l
    np.testing.assert_allclose([aU[2], bU[2]], [s_lr[2], r - s_lr[2] * r])
    np.testing.assert_allclose([aL[0], bL[0]], [_f(1.5, r, eta) / 1.5, 0.0])  # u > -l
    np.testing.assert_allclose([aL[1], bL[1]], [_f(6.0, r, eta) / 6.0, 0.0])
    np.testing.assert_allclose([aL[2], bL[2]], [eta, 0.0], atol=1e-15)  # u <= -l


@pytest.mark.parametrize("eta", (0.0, 0.01, 0.3))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_leaky_relu_lines_bound_f_and_tight_beats_constant(strategy, eta):
    rng = np.random.default_rng(3)
    l = rng.uniform(-3, 3, 900)
    u = l + rng.uniform(0, 3, 900)
    l[:300], u[:300] = -rng.uniform(1e-6, 3, 300), rng.uniform(1e-6, 3, 300)  # many unstable
    assert set(relu_status(l, u)) == {0, 1, 2}
    f = lambda z: np.where(z >= 0, z, eta * z)  # noqa: E731
    aL, bL, aU, bU = leaky_relu_lines(BK, l, u, eta, strategy)
    z = _grid(l, u)
    tol = 1e-9 * (1 + np.abs(z))
    assert (aL[:, None] * z + bL[:, None] <= f(z) + tol).all()
    assert (f(z) <= aU[:, None] * z + bU[:, None] + tol).all()
    if strategy == "tight":
        assert (aL[:, None] * z + bL[:, None] >= f(l)[:, None] - tol).all()
        assert (aU[:, None] * z + bU[:, None] <= f(u)[:, None] + tol).all()


def test_zero_width_intervals_are_exact():
    """l == u anywhere but at r: every strategy's lines pass through (l, f(l))."""
    r = np.ones(7)
    z = np.array([-1.0, 0.0, 0.3, 1 + 1e-9, 2.0, 1e-7, 1 - 1e-7])
    for strategy in STRATEGIES:
        aL, bL, aU, bU = paramramp_lines(BK, z, z, r, 0.05, strategy)
        np.testing.assert_allclose(aL * z + bL, _f(z, r, 0.05), atol=1e-12)
        np.testing.assert_allclose(aU * z + bU, _f(z, r, 0.05), atol=1e-12)


@pytest.mark.parametrize("strategy", ("tight", "adaptive"))
def test_lines_at_l_equal_u_equal_r(strategy):
    r = np.array([1.0, 0.5, 1e-4])
    aL, bL, aU, bU = paramramp_lines(BK, r, r, r, 0.05, strategy)
    np.testing.assert_allclose(aL * r + bL, _f(r, r, 0.05), atol=1e-12)
    np.testing.assert_allclose(aU * r + bU, _f(r, r, 0.05), atol=1e-12)


def test_point_input_at_the_bend_point_is_sound():
    from onnxverify.ir import Graph, Node

    one = {"weight": np.ones((1, 1), np.float32), "bias": np.zeros(1, np.float32)}
    g = Graph([Node("x", "Input", (), shape=(1,)), Node("h", "Linear", ("x",), dict(one), shape=(1,)),
               Node("a", "ParamRamp", ("h",), {"r": np.full(1, 0.5, np.float32)}, {"eta": 0.0}, shape=(1,)),
               Node("y", "Linear", ("a",), dict(one), shape=(1,))], "y")
    net = ov.Network(g)
    x = np.array([[0.5]])
    y = net.forward(x)
    for method in METHODS[1:]:
        b = net.bounds(ov.LinfBall(x, 0.0), method, strategy="tight")
        assert b.lower[0, 0] <= y[0, 0] + 1e-6 <= b.upper[0, 0] + 2e-6, method


def test_lower_chord_sound_for_tiny_widths():
    """Right unstable with u - l = 4e-7: the tight/adaptive lower line is the chord."""
    r = np.array([1.0])
    l, u = r - 2e-7, r + 2e-7
    for strategy in ("tight", "adaptive"):
        aL, bL, _, _ = paramramp_lines(BK, l, u, r, 0.0, strategy)
        assert (aL * l + bL <= _f(l, r, 0.0) + 1e-12).all()


# =====================================================================================
# soundness by sampling, constant == IBP, Theorem 2
# =====================================================================================
CASES = [("mlp", 0, 0.0), ("mlp", 1, 0.01), ("mlp", 2, 0.3), ("conv", 0, 0.01), ("conv", 1, 0.0)]


@pytest.fixture(scope="module")
def cases():
    """(model, network, input set, onnxruntime outputs at sampled points, margin spec)."""
    out = {}
    for arch, seed, eta in CASES:
        model = ARCHS[arch](seed, eta)
        net = _network(model)
        x0 = _x0(model, seed)
        eps = 0.15 if arch == "mlp" else 0.08
        iset = ov.LinfBall(x0, eps, clip=(0.0, 1.0) if seed % 2 else None)
        y = _sample_outputs(model, iset, net.input_shape, np.random.default_rng(seed))
        labels = net.forward(x0).argmax(axis=1)
        spec = ov.margin_spec(labels, net.n_outputs)
        out[(arch, seed, eta)] = (model, net, iset, y, np.asarray(spec, dtype=np.float64))
    return out


def _network(model):
    from onnxverify.network import Network
    from onnxverify.onnx.importer import import_model

    return Network(import_model(model), None, model)


def test_random_nets_reach_all_six_statuses(cases):
    seen = set()
    for _, net, iset, _, _ in cases.values():
        for st in neuron_status(net, iset, "ibp"):
            seen |= {s for s, c in st.counts.items() if c}
    assert seen == set(PARAMRAMP_STATUSES)


@pytest.mark.parametrize("case", CASES, ids=[f"{a}-{s}-eta{e}" for a, s, e in CASES])
def test_soundness_by_sampling(cases, case):
    model, net, iset, y, spec = cases[case]
    B = y.shape[0]
    ys = np.einsum("bkn,bpn->bpk", spec, y)
    for method in METHODS:
        for strategy in STRATEGIES if method != "ibp" else (None,):
            for dtype in (np.float64, np.float32):
                if dtype == np.float32 and strategy not in (None, "adaptive"):
                    continue
                what = f"{case} {method}/{strategy}/{np.dtype(dtype).name}"
                b = net.bounds(iset, method=method, strategy=strategy, dtype=dtype, intersect_ibp=False)
                lo, hi = np.asarray(b.lower, np.float64).reshape(B, -1), np.asarray(b.upper, np.float64).reshape(B, -1)
                assert (lo <= hi + _tol(hi)).all(), what
                _assert_inside(y, lo, hi, what + " outputs")
                b = net.bounds(iset, method=method, strategy=strategy, dtype=dtype, spec=spec, intersect_ibp=False)
                _assert_inside(ys, np.asarray(b.lower, np.float64), np.asarray(b.upper, np.float64), what + " margins")


@pytest.mark.parametrize("case", CASES[::2], ids=[f"{a}-{s}-eta{e}" for a, s, e in CASES[::2]])
def test_lp_ball_soundness(cases, case):
    model, net, _, _, _ = cases[case]
    rng = np.random.default_rng(5)
    x0 = _x0(model, 11, batch=1)
    n = x0[0].size
    for p, eps in ((2, 0.4), (1, 0.6)):
        iset = ov.LpBall(x0, eps, p)
        d = rng.normal(size=(600, n))
        if p == 2:
            d = d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(0, 1, (600, 1)) ** (1 / n)
        else:  # vertices of the l1 ball and random points inside it
            d = d / np.abs(d).sum(axis=1, keepdims=True) * rng.uniform(0, 1, (600, 1))
            d = np.concatenate([np.eye(n), -np.eye(n), d])
        pts = (x0.reshape(1, -1) + eps * d * (1 - 1e-6)).reshape((-1,) + net.input_shape).astype(np.float32)
        y = OrtModel(model)(pts).reshape(1, len(pts), -1).astype(np.float64)
        for method in METHODS:
            for strategy in STRATEGIES if method != "ibp" else (None,):
                b = net.bounds(iset, method=method, strategy=strategy, dtype=np.float64, intersect_ibp=False)
                _assert_inside(y, np.asarray(b.lower).reshape(1, -1), np.asarray(b.upper).reshape(1, -1),
                               f"{case} l{p} {method}/{strategy}")


@pytest.mark.parametrize("case", CASES, ids=[f"{a}-{s}-eta{e}" for a, s, e in CASES])
def test_constant_strategy_reduces_to_ibp(cases, case):
    _, net, iset, _, spec = cases[case]
    for s in (None, spec):
        ibp = net.bounds(iset, "ibp", spec=s, dtype=np.float64)
        for method in METHODS[1:]:
            b = net.bounds(iset, method, strategy="constant", spec=s, dtype=np.float64, intersect_ibp=False)
            np.testing.assert_allclose(b.lower, ibp.lower, rtol=1e-9, atol=1e-9, err_msg=method)
            np.testing.assert_allclose(b.upper, ibp.upper, rtol=1e-9, atol=1e-9, err_msg=method)


def _contains(outer, inner):
    """inner ⊆ outer elementwise with 1e-5 relative slack."""
    return ((outer.lower <= inner.lower + _tol(inner.lower)).all()
            and (inner.upper <= outer.upper + _tol(inner.upper)).all())


@pytest.mark.parametrize("case", CASES, ids=[f"{a}-{s}-eta{e}" for a, s, e in CASES])
def test_theorem2_ordering_tight(cases, case):
    _, net, iset, _, spec = cases[case]
    for s in (None, spec):
        b = {m: net.bounds(iset, m, strategy="tight", spec=s, dtype=np.float64, intersect_ibp=False)
             for m in ("ibp", "lbp", "crown-ibp", "crown-lbp", "crown")}
        for outer, inner in (("ibp", "lbp"), ("ibp", "crown-ibp"), ("lbp", "crown-lbp"),
                             ("crown-ibp", "crown-lbp"), ("crown-lbp", "crown")):
            assert _contains(b[outer], b[inner]), f"{case} spec={s is not None}: {outer} does not contain {inner}"
        # and the theorem is not vacuous here: the linear methods are strictly tighter somewhere
        assert (b["crown"].upper - b["crown"].lower).sum() < (b["ibp"].upper - b["ibp"].lower).sum()


# =====================================================================================
# torch round trip
# =====================================================================================
@pytest.fixture(scope="module")
def prt():
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from onnxverify.converters import paramramp_torch

    return paramramp_torch


def test_torch_round_trip_ort_and_verifier(prt, tmp_path):
    """torch ParamRamp net -> export -> onnxruntime == torch -> onnxverify forward == onnxruntime,
    and onnxverify's bounds contain onnxruntime's outputs."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), prt.ParamRamp((3, 5, 5), eta=0.01),
                        nn.Flatten(), nn.Linear(75, 10), prt.ParamRamp(10, eta=0.01), nn.Linear(10, 3))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, prt.ParamRamp):
                m.r.copy_(torch.from_numpy(_Net(1, (1,)).ramp_r(m.shape)))
    path = tmp_path / "pr.onnx"
    prt.export_onnx(net, torch.randn(1, 1, 5, 5), path, opset=17)
    x = rng.uniform(0, 1, (9, 1, 5, 5)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    ort_y = OrtModel(str(path))(x)
    np.testing.assert_allclose(ort_y, want, atol=1e-5, rtol=1e-5)

    ovn = ov.load(path)
    assert ovn.graph.op_counts().get("ParamRamp") == 2  # one IR node each, not the inlined body
    assert not {"Min", "Max", "Relu"} & set(ovn.graph.op_counts())
    np.testing.assert_allclose(ovn.forward(x), ort_y, atol=1e-5, rtol=1e-5)
    assert ovn.check().ok

    iset = ov.LinfBall(x[:2], 0.05, clip=(0, 1))
    y = _sample_outputs(ovn.model, iset, ovn.input_shape, rng, n_random=300)
    for method in METHODS:
        b = ovn.bounds(iset, method, strategy="tight" if method != "ibp" else None, dtype=np.float64,
                       intersect_ibp=False)
        _assert_inside(y, np.asarray(b.lower), np.asarray(b.upper), f"torch net {method}")


# =====================================================================================
# bad input
# =====================================================================================
def _one_node_model(r_shape=(4,), eta=0.1, attach=True, r_dtype=np.float32):
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["input", "W"], ["h"], transB=1),
             helper.make_node("ParamRamp", ["h", "R"], ["y"], domain="onnxverify", eta=eta, name="ramp1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(w, "W"),
                           numpy_helper.from_array(np.full(r_shape, 0.5, r_dtype), "R")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("onnxverify", 1)],
                          ir_version=8)
    if attach:
        attach_paramramp_function(m)
    return m


def _cli(args):
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def _one_error_line(out):
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]


@pytest.mark.parametrize("r_shape", [(5,), (2, 4), (4, 1)])
def test_wrong_shaped_r_is_a_one_line_model_error(tmp_path, r_shape):
    path = tmp_path / "bad_r.onnx"
    onnx.save(_one_node_model(r_shape=r_shape), path)
    with pytest.raises(ov.ModelError) as e:
        ov.load(path)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert "ramp1" in msg and "R" in msg and str(r_shape) in msg and "(4,)" in msg
    code, out = _cli(["check", str(path)])
    assert code == 2
    assert "ramp1" in _one_error_line(out)


@pytest.mark.parametrize("eta", [-0.5, -1e-3])
def test_negative_eta_is_a_one_line_model_error(tmp_path, eta):
    path = tmp_path / "bad_eta.onnx"
    onnx.save(_one_node_model(eta=eta), path)
    with pytest.raises(ov.ModelError) as e:
        ov.load(path)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "eta" in msg and "ramp1" in msg
    code, out = _cli(["check", str(path)])
    assert code == 2
    assert "eta" in _one_error_line(out)


def test_missing_function_body_still_imports(tmp_path):
    """A tool pass dropped the function: onnxruntime cannot run the model, the verifier
    still can (it knows the op); re-attaching the function makes the two agree."""
    model = _one_node_model(attach=False)
    path = tmp_path / "nofn.onnx"
    onnx.save(model, path)
    net = ov.load(path)
    assert net.graph.op_counts()["ParamRamp"] == 1
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    iset = ov.LinfBall(x, 0.1)
    b = net.bounds(iset, "crown", strategy="tight")
    y = net.forward(x)
    assert (b.lower <= y + 1e-6).all() and (y <= b.upper + 1e-6).all()
    import onnxruntime as ort

    with pytest.raises(Exception):  # stock onnxruntime has no kernel for the bare custom op
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(OrtModel(model)(x), y, atol=1e-6)  # OrtModel re-attaches the body
    assert not model.functions  # ... on a copy
    attach_paramramp_function(model)
    np.testing.assert_allclose(OrtModel(model)(x), y, atol=1e-6)


def test_function_dropped_by_version_conversion_still_imports():
    model = paramramp_mlp(3, 0.01)
    converted = onnx.version_converter.convert_version(model, 18)
    assert not any(f.name == "ParamRamp" for f in converted.functions)
    x = np.random.default_rng(2).uniform(0, 1, (4, 6)).astype(np.float32)
    np.testing.assert_allclose(_network(converted).forward(x), OrtModel(model)(x), atol=1e-6)


def test_check_cli_on_missing_function_body(tmp_path):
    path = tmp_path / "nofn.onnx"
    onnx.save(_one_node_model(attach=False), path)
    code, out = _cli(["check", str(path)])
    if code == 2:  # a clear one-line user error naming the op and the fix
        line = _one_error_line(out)
        assert "ParamRamp" in line and "function" in line and "internal" not in line
    else:  # or the checker re-attaches the known function and the comparison passes
        assert code == 0 and "OK" in out, out


def test_paramramp_node_with_one_input_is_a_model_error(tmp_path):
    model = _one_node_model()
    node = next(n for n in model.graph.node if n.op_type == "ParamRamp")
    del node.input[1:]
    path = tmp_path / "one_input.onnx"
    onnx.save(model, path)
    with pytest.raises(ov.ModelError, match="ParamRamp"):
        ov.load(path)
