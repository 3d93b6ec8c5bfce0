"""The compiled bound plan (onnxverify.bounds.plan): reused across calls, never stale."""
import numpy as np

import nets
from onnxverify.backend import get_backend
from onnxverify.bounds import compute_bounds
from onnxverify.bounds.plan import plan_of
from onnxverify.onnx.importer import import_model
from onnxverify.specs.input_sets import Box


def _graph_and_box(seed=0):
    model, (lo, hi) = nets.convnet(seed)
    g = import_model(model)
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, (2,) + tuple(g.input_shape)).astype(np.float32)
    return g, Box(np.clip(x - 0.05, lo, hi), np.clip(x + 0.05, lo, hi))


def test_plan_is_built_once_and_calls_agree():
    g, box = _graph_and_box()
    first = {m: compute_bounds(g, box, m) for m in ("crown-ibp", "crown", "lbp")}
    plan = plan_of(g)
    assert plan_of(g) is plan and plan._offsets  # constant terms cached by the first calls
    for m, b in first.items():
        again = compute_bounds(g, box, m)
        np.testing.assert_array_equal(again.lower, b.lower)
        np.testing.assert_array_equal(again.upper, b.upper)


def test_offsets_follow_new_parameters():
    """A node given new parameter arrays gets its constant term recomputed (cache keyed by
    the arrays' identity), so the bounds are those of the new network."""
    g, box = _graph_and_box(1)
    bk = get_backend("numpy")
    compute_bounds(g, box, "crown-ibp")
    node = next(n for n in g.nodes if "bias" in n.params)
    before = np.array(plan_of(g).offset(bk, node.name, np.float32))
    node.params["bias"] = node.params["bias"] + np.float32(1.0)
    after = np.array(plan_of(g).offset(bk, node.name, np.float32))
    np.testing.assert_allclose(after - before, 1.0, atol=1e-5)
    fresh = import_model(nets.convnet(1)[0])
    fresh[node.name].params["bias"] = node.params["bias"]
    for m in ("crown-ibp", "crown"):
        a, b = compute_bounds(g, box, m), compute_bounds(fresh, box, m)
        np.testing.assert_allclose(a.lower, b.lower, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.upper, b.upper, rtol=1e-6, atol=1e-6)


def test_unit_row_first_step_equals_one_hot_pass(monkeypatch):
    """Intermediate passes start from unit rows; Linear takes them as a gather of weight rows
    (adjoint_rows) instead of a product with one-hot rows: the bounds agree to 1e-6."""
    from onnxverify.bounds import passes

    model, (lo, hi) = nets.mlp_leaky(2)
    g = import_model(model)
    x = np.random.default_rng(2).uniform(lo, hi, (3,) + tuple(g.input_shape)).astype(np.float32)
    box = Box(np.clip(x - 0.1, lo, hi), np.clip(x + 0.1, lo, hi))
    for method in ("crown", "relaxed-crown-2"):
        fast = compute_bounds(g, box, method, intersect_ibp=False)
        with monkeypatch.context() as m:
            m.setattr(passes, "_unit_first_step", lambda *a, **k: None)
            slow = compute_bounds(g, box, method, intersect_ibp=False)
        np.testing.assert_allclose(fast.lower, slow.lower, atol=1e-6)
        np.testing.assert_allclose(fast.upper, slow.upper, atol=1e-6)
