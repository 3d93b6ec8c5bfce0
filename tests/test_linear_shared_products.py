"""Linear backward steps restricted to the used / differing features of the two passes
(``Linear.backward_linear``): the same bounds as the stacked product, sound, and cheaper."""
import numpy as np
import onnxruntime as ort
import pytest

import nets
from onnxverify.backend import get_backend
from onnxverify.bounds import compute_bounds
from onnxverify.onnx.importer import import_model
from onnxverify.ops import linear
from onnxverify.specs.input_sets import Box


def wide_mlp(seed=0, act="Relu"):
    """64 -> 96 -> 80 -> 48 -> 10 with wide enough layers for the restricted products."""
    b = nets.Builder(seed, (1, 8, 8))
    x = b.flatten("input")
    for n_in, n_out in ((64, 96), (96, 80), (80, 48)):
        x = b.gemm(x, n_in, n_out)
        x = b.node(act, [x]) if act != "LeakyRelu" else b.node("LeakyRelu", [x], alpha=0.05)
    x = b.gemm(x, 48, 10)
    return b.model(x, [10])


def _box(seed, eps, batch=2):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, 1, 8, 8))
    return Box(x - eps, x + eps)


class MacCounter:
    def __init__(self, monkeypatch, bk):
        self.macs = 0
        orig = type(bk).matmul

        def counted(this, a, b):
            self.macs += int(np.prod(a.shape)) * int(b.shape[-1])
            return orig(this, a, b)

        monkeypatch.setattr(type(bk), "matmul", counted)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("act", ["Relu", "LeakyRelu"])
@pytest.mark.parametrize("method,strategy", [("crown", "adaptive"), ("crown", "tight"), ("crown", "constant"),
                                             ("crown-ibp", "adaptive"), ("relaxed-crown-2", "adaptive")])
def test_equal_to_the_stacked_product(monkeypatch, backend, act, method, strategy):
    if backend == "torch":
        pytest.importorskip("torch")
    g = import_model(wide_mlp(1, act))
    box = _box(1, 0.02)
    C = np.eye(10)[None].repeat(2, 0)
    bk = get_backend(backend)
    compute_bounds(g, box, method, C, strategy, backend=backend, dtype=np.float64)  # the plan's caches
    counter = MacCounter(monkeypatch, bk)
    new = compute_bounds(g, box, method, C, strategy, backend=backend, dtype=np.float64)
    new_macs, counter.macs = counter.macs, 0
    monkeypatch.setattr(linear, "SHARED_MAX", 0.0)  # always the stacked product
    old = compute_bounds(g, box, method, C, strategy, backend=backend, dtype=np.float64)
    lo_n, hi_n, lo_o, hi_o = (bk.to_numpy(a) for a in (new.lower, new.upper, old.lower, old.upper))
    np.testing.assert_allclose(lo_n, lo_o, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hi_n, hi_o, rtol=1e-12, atol=1e-12)
    if act == "Relu" and strategy != "constant":  # dead and stable neurons: cheaper products
        assert new_macs < 0.9 * counter.macs, (new_macs, counter.macs)
    else:  # (LeakyReLU has no dead neurons) never more work than the stacked product
        assert new_macs <= counter.macs


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu"])
@pytest.mark.parametrize("method", ["crown", "crown-ibp"])
def test_sound_by_sampling(act, method):
    model = wide_mlp(2, act)
    g = import_model(model)
    box = _box(2, 0.1, batch=1)
    b = compute_bounds(g, box, method, None, "adaptive")
    rng = np.random.default_rng(0)
    xs = rng.uniform(box.lower, box.upper, (4000, 1, 8, 8)).astype(np.float32)
    corners = np.where(rng.random((1000, 1, 8, 8)) < 0.5, box.lower, box.upper).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ys = sess.run(None, {"input": np.concatenate([xs, corners])})[0]
    tol = 1e-4
    assert (ys >= b.lower - tol).all() and (ys <= b.upper + tol).all()
    assert (b.upper - b.lower).min() > 0


def test_nan_columns_are_kept(monkeypatch):
    """A coefficient that overflowed to NaN is a used feature: dropping it would lose the
    term and give a finite (unsound) bound. The bound stays NaN (read as unknown)."""
    from onnxverify.ops.linear import Linear

    g = import_model(wide_mlp(3))
    node = next(n for n in g.nodes if n.op == "Linear" and n.shape == (80,))
    bk = get_backend("numpy")

    class Step:
        offset = np.zeros((1, 80))
        in_shapes = [(96,)]

    rng = np.random.default_rng(0)
    AL = rng.normal(size=(1, 3, 80))
    AL[:, :, 40:] = 0.0
    AU = AL.copy()
    AL[0, 1, 60] = np.nan
    AU[0, 2, 70] = np.nan
    (lo, hi), = Linear().backward_linear(bk, node, Step(), AL, AU)[0]
    assert np.isnan(lo[0, 1]).all() and np.isnan(hi[0, 1]).all() and np.isnan(hi[0, 2]).all()
    W = node.params["weight"].astype(np.float64)
    np.testing.assert_allclose(lo[0, 0], AL[0, 0] @ W, rtol=1e-12)


def test_alpha_crown_lower_only_passes_equal(monkeypatch):
    """alpha-CROWN (torch autograd through the gathers) with lower-only output passes gives
    the same optimised bounds as with the stacked products (float64, a few Adam steps)."""
    pytest.importorskip("torch")
    from onnxverify.bounds.optimized import alpha_crown

    g = import_model(wide_mlp(4))
    box = _box(4, 0.02, batch=1)
    C = np.eye(10)[None]
    alpha_crown(g, box, C, iters=1, upper=False)  # the plan's caches
    counter = MacCounter(monkeypatch, get_backend("torch"))
    new = alpha_crown(g, box, C, iters=4, upper=False)
    new_macs, counter.macs = counter.macs, 0
    monkeypatch.setattr(linear, "SHARED_MAX", 0.0)
    old = alpha_crown(g, box, C, iters=4, upper=False)
    np.testing.assert_allclose(new.lower, old.lower, rtol=1e-9, atol=1e-9)
    assert new_macs < 0.9 * counter.macs, (new_macs, counter.macs)
    crown = compute_bounds(g, box, "crown", C, "adaptive", dtype=np.float64)
    assert (new.lower >= crown.lower - 1e-9).all() and (new.lower > crown.lower + 1e-6).any()
