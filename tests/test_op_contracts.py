"""Contract tests driven by the op registry: every registered converter's examples become
one-node ONNX models, and every rule they import to is checked on them.

A new op module under ``onnxverify/ops/`` is tested here without writing a test: its
converters' :class:`~onnxverify.ops.Example` nodes are enumerated from the registry.

Checks: forward equals onnxruntime; the interval rule contains sampled outputs; every linear
method x strategy is sound by sampling; affine rules are adjoint to their transposes
(``<A, L x> == <L^T A, x>``, windowed transposes included) and ``|L|`` dominates ``L``;
bounding lines of elementwise rules are sound on dense grids for every strategy, with
equal, tiny and huge intervals; VJPs match finite differences.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxverify as ov
from onnxverify.backend import get_backend
from onnxverify.ops import REGISTRY, STRATEGIES, Registry, rule_of
from onnxverify.ops.base import Example, OpRule, onnx_op
from onnxverify.onnx.reference import OrtModel

NP = get_backend("numpy")
LINEAR_METHODS = ("lbp", "crown-ibp", "crown-lbp", "crown", "relaxed-crown-2")
OPSET_RANGE = (8, 21)


def _opsets(conv, example):
    if example.opsets is not None:
        return tuple(example.opsets)
    if conv.domain:  # a custom domain: its body needs default-domain opset >= 13
        return (13, 21)
    until = conv.until(REGISTRY)
    lo = max(conv.since, OPSET_RANGE[0])
    hi = min((until - 1) if until else OPSET_RANGE[1], OPSET_RANGE[1])
    return tuple(sorted({lo, hi}))


def _cases():
    out = []
    for conv in REGISTRY.converters():
        for k, ex in enumerate(conv.examples):
            for opset in _opsets(conv, ex):
                out.append(pytest.param(conv, ex, opset, id=f"{conv.domain or 'ai.onnx'}.{conv.op_type}-v{conv.since}"
                                                             f"-ex{k}-opset{opset}"))
    return out


CASES = _cases()


def build_model(conv, ex: Example, opset: int):
    """A model computing one ``conv.op_type`` node from one graph input.

    One computed operand: the graph input itself. Several: a flat graph input whose disjoint
    slices (MatMul by 0/1 selection matrices, then Reshape) feed the operands."""
    computed = [i for i, v in enumerate(ex.inputs) if isinstance(v, tuple)]
    nodes, inits, names = [], [], []
    shapes = [ex.inputs[i] for i in computed]
    if len(computed) == 1:
        graph_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(shapes[0][1:]))
        sources = {computed[0]: "x"}
        in_range = (ex.low, ex.high)
    else:
        sizes = [int(np.prod(s[1:])) for s in shapes]
        total = sum(sizes)
        graph_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", total])
        sources, start = {}, 0
        for i, s, n in zip(computed, shapes, sizes):
            sel = np.zeros((total, n), dtype=np.float32)
            sel[start + np.arange(n), np.arange(n)] = 1.0
            start += n
            inits += [numpy_helper.from_array(sel, f"sel{i}"), numpy_helper.from_array(np.array((-1,) + tuple(s[1:]), np.int64), f"shape{i}")]
            nodes += [helper.make_node("MatMul", ["x", f"sel{i}"], [f"flat{i}"]),
                      helper.make_node("Reshape", [f"flat{i}", f"shape{i}"], [f"op{i}"])]
            sources[i] = f"op{i}"
        in_range = (ex.low, ex.high)
    for i, v in enumerate(ex.inputs):
        if i in sources:
            names.append(sources[i])
        elif v is None:
            names.append("")
        else:
            inits.append(numpy_helper.from_array(np.asarray(v), f"c{i}"))
            names.append(f"c{i}")
    outs = ["y" if k == ex.output else f"y_other{k}" for k in range(ex.outputs)]
    nodes.append(helper.make_node(conv.op_type, names, outs, name="under_test", domain=conv.domain, **ex.attrs))
    graph = helper.make_graph(nodes, "contract", [graph_in], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(conv.domain, conv.since)] if conv.domain else [])
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    if not conv.domain:  # an index output (ArgMax) is int64: the declared type follows shape inference
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
        inferred = onnx.shape_inference.infer_shapes(probe).graph.output[0].type.tensor_type.elem_type
        if inferred not in (TensorProto.UNDEFINED, TensorProto.FLOAT):
            model.graph.output[0].type.tensor_type.elem_type = inferred
    return model, in_range


def _load(conv, ex, opset):
    """``(network, onnxruntime model, low, high, batch)`` for one example."""
    model, (lo, hi) = build_model(conv, ex, opset)
    net = ov.Network(ov.import_model(model, fuse=False), model=model)
    batch = next(v for v in ex.inputs if isinstance(v, tuple))[0]
    return net, OrtModel(model), lo, hi, batch


def _tested_nodes(net):
    """IR nodes made from the node under test (not the operand plumbing)."""
    return [n for n in net.graph.computed if "under_test" in n.source]


def _samples(rng, lo, hi, n):
    """Uniform points and corners of the box ``lo, hi (B, *shape)``: ``(n, B, *shape)``."""
    u = rng.uniform(size=(n,) + lo.shape)
    u[: n // 4] = rng.integers(0, 2, size=(n // 4,) + lo.shape)
    return lo + u * (hi - lo)


def _ort_many(ort, pts):
    return np.stack([ort(p.astype(np.float32)) for p in pts]).astype(np.float64)


# ---- the registry itself ---------------------------------------------------------------------------
def test_every_rule_is_reached_by_an_example():
    reached = set()
    for conv in REGISTRY.converters():
        for ex in conv.examples:
            net = _load(conv, ex, _opsets(conv, ex)[-1])[0]
            reached |= {n.op for n in _tested_nodes(net)}
    missing = {r.op for r in REGISTRY.rules()} - reached
    assert not missing, f"rules no converter example reaches (add Example(...) to their converters): {missing}"


def test_every_converter_has_examples():
    bare = [f"{c.op_type}@{c.since}" for c in REGISTRY.converters() if not c.examples and not c.yields_constant]
    assert not bare, f"converters without contract examples: {bare}"


def test_registering_twice_raises():
    class Twice(OpRule):
        op = "Twice"

        @onnx_op("Twice", since=3)
        def convert(self, ctx, node, attrs, label):
            pass

    reg = Registry()
    reg.add_rule(Twice())
    with pytest.raises(ValueError, match="registered twice"):
        reg.add_rule(Twice())
    with pytest.raises(ValueError, match="version 3 is registered twice"):
        reg.add_converter("", "Twice", 3, None, Twice())
    assert reg.converter("", "Twice", 2) is None and reg.converter("ai.onnx", "Twice", 3) is not None


def test_lookup_resolves_the_opset_version():
    for op, old, new in (("Squeeze", 12, 13), ("Unsqueeze", 12, 13), ("Pad", 10, 11)):
        a, b = REGISTRY.converter("", op, old), REGISTRY.converter("", op, new)
        assert a is not None and b is not None and a.since < b.since and a.fn != b.fn
        assert REGISTRY.converter("", op, 21).since == b.since
    assert REGISTRY.converter("", "Pad", 1) is None  # Pad-1 (``paddings``) is not supported


def test_unsupported_ops_are_all_named_even_downstream():
    """Hardmax -> MatMul -> LpNormalization names both, not only the first."""
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    nodes = [helper.make_node("Hardmax", ["x"], ["e"], name="hard"), helper.make_node("MatMul", ["e", "w"], ["m"], name="mm"),
             helper.make_node("LpNormalization", ["m"], ["y"], name="lpn")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ov.UnsupportedOpError) as e:
        ov.import_model(m)
    assert [op for op, _ in e.value.unsupported] == ["Hardmax", "LpNormalization"]


def test_unsupported_op_is_named_before_the_input_shape_is_checked():
    """A time-major LSTM input (batch axis 3) must be reported as the unsupported op it is."""
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=2)]
    inits = [numpy_helper.from_array(np.zeros((1, 8, 4), np.float32), "W"),
             numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "R")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(ov.UnsupportedOpError, match="LSTM"):
        ov.import_model(m)


# ---- per example ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("conv,ex,opset", CASES)
def test_forward_matches_onnxruntime(conv, ex, opset):
    net, ort, lo, hi, batch = _load(conv, ex, opset)
    rng = np.random.default_rng(0)
    x = rng.uniform(lo, hi, (batch,) + net.input_shape).astype(np.float32)
    ref = ort(x).astype(np.float64)
    ours = np.asarray(net.forward(x), dtype=np.float64).reshape(ref.shape)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * (1 + np.abs(ref).max()))


@pytest.mark.parametrize("conv,ex,opset", CASES)
def test_interval_and_linear_methods_are_sound(conv, ex, opset):
    net, ort, lo, hi, batch = _load(conv, ex, opset)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(lo, hi, (batch,) + net.input_shape)
    eps = 0.15 * (hi - lo)
    box = ov.Box(x0 - eps, x0 + eps)
    pts = _samples(rng, box.lower, box.upper, 48)
    ys = _ort_many(ort, pts).reshape((len(pts), batch, -1))
    results = [("ibp", None, net.bounds(box, method="ibp", dtype=np.float64))]
    for method in LINEAR_METHODS:
        for strategy in STRATEGIES:
            results.append((method, strategy, net.bounds(box, method=method, strategy=strategy, dtype=np.float64,
                                                         intersect_ibp=False)))
    scale = 1e-6 * (1 + np.abs(ys).max())
    for method, strategy, b in results:
        l, u = b.lower.reshape(batch, -1), b.upper.reshape(batch, -1)
        assert np.all(ys >= l - scale) and np.all(ys <= u + scale), (method, strategy)
    # a point box is exact for every method
    point = ov.Box(x0, x0)
    y0 = ort(x0.astype(np.float32)).reshape(batch, -1)
    for method in ("ibp",) + LINEAR_METHODS:
        b = net.bounds(point, method=method, dtype=np.float64)
        np.testing.assert_allclose(b.lower.reshape(batch, -1), y0, rtol=1e-5, atol=1e-5 * (1 + np.abs(y0).max()))
        np.testing.assert_allclose(b.upper.reshape(batch, -1), y0, rtol=1e-5, atol=1e-5 * (1 + np.abs(y0).max()))


@pytest.mark.parametrize("conv,ex,opset", CASES)
def test_affine_rules_are_adjoint(conv, ex, opset):
    net = _load(conv, ex, opset)[0]
    rng = np.random.default_rng(2)
    for node in _tested_nodes(net):
        rule = rule_of(node)
        if not rule.affine:
            continue
        shapes = [net.graph[i].shape for i in node.inputs]
        xs = [rng.normal(size=(3,) + tuple(s)) for s in shapes]
        y = rule.apply(NP, node, *xs, bias=False)
        A = rng.normal(size=y.shape)
        back = rule.adjoint(NP, node, A, shapes)
        lhs = float((A * y).sum())
        rhs = sum(float((a * x).sum()) for a, x in zip(back, xs))
        assert np.isclose(lhs, rhs, rtol=1e-9, atol=1e-9), node
        ya = rule.apply_abs(NP, node, *[np.abs(x) for x in xs])
        assert np.all(ya >= np.abs(y) - 1e-9), node
        off = rule.offset(NP, node, shapes, np.float64)
        np.testing.assert_allclose(rule.apply(NP, node, *xs, bias=True), y + off, rtol=1e-9, atol=1e-9)
        if rule.windowed and len(node.shape) == 3 and node.shape[1] > 1 and node.shape[2] > 1:
            _check_window(rule, node, shapes, rng)


def _check_window(rule, node, shapes, rng):
    C, H, W = node.shape
    win = (1, H, 0, max(1, W - 1))
    A = np.zeros((2, C, H, W))
    A[:, :, win[0]:win[1], win[2]:win[3]] = rng.normal(size=(2, C, win[1] - win[0], win[3] - win[2]))
    dense = rule.adjoint(NP, node, A, shapes)
    windowed = rule.adjoint_window(NP, node, A[:, :, win[0]:win[1], win[2]:win[3]], win, shapes)
    for full, (part, (r0, r1, c0, c1)) in zip(dense, windowed):
        np.testing.assert_allclose(full[:, :, r0:r1, c0:c1], part, rtol=1e-9, atol=1e-9)
        rest = full.copy()
        rest[:, :, r0:r1, c0:c1] = 0
        assert np.abs(rest).max() < 1e-9, node  # nothing outside the returned window


def _interval_kinds(rng, shape, lo, hi):
    """Pairs ``l <= u`` of shape ``(N, *shape)``: random, equal, tiny, huge and kink-straddling."""
    n = 6
    c = rng.uniform(lo, hi, (n,) + shape)
    w = rng.uniform(0, (hi - lo) / 2, (n,) + shape)
    pairs = [(c - w, c + w), (c, c), (c - 1e-7, c + 1e-7), (c * 0 - 1e4, c * 0 + 1e4), (c * 0 - 3, c * 0 + 1e-9),
             (c * 0 - 1e-9, c * 0 + 3), (c - w * 40, c + w * 40)]
    return [(np.asarray(a, np.float64), np.asarray(b, np.float64)) for a, b in pairs]


@pytest.mark.parametrize("conv,ex,opset", CASES)
def test_bounding_lines_are_sound_on_grids(conv, ex, opset):
    net, _, lo, hi, _ = _load(conv, ex, opset)
    rng = np.random.default_rng(3)
    for node in _tested_nodes(net):
        rule = rule_of(node)
        if not (rule.elementwise and not rule.affine):
            continue
        for l, u in _interval_kinds(rng, tuple(node.shape), lo, hi):
            grid = l[None] + np.linspace(0, 1, 257).reshape((-1,) + (1,) * l.ndim) * (u - l)[None]
            grid = np.clip(grid, l, u)  # l + 1 * (u - l) can round past u
            with np.errstate(all="ignore"):
                f = np.stack([rule.forward(NP, node, z) for z in grid])
            # NaN: outside the op's domain (onnxruntime gives NaN too), never a counterexample;
            # +-inf (poles, overflow) must be met by infinite lines: the scale ignores them
            undefined = np.isnan(f)
            scale = 1e-9 * (1 + np.abs(np.where(np.isfinite(f), f, 0)).max())
            for strategy in STRATEGIES:
                aL, bL, aU, bU = rule.lines(NP, node, l, u, strategy)
                assert np.all(undefined | (aL * grid + bL <= f + scale)), (strategy, node)
                assert np.all(undefined | (f <= aU * grid + bU + scale)), (strategy, node)
                if rule.nonneg_slopes:
                    assert np.all(aL >= 0) and np.all(aU >= 0), (strategy, node)


@pytest.mark.parametrize("conv,ex,opset", CASES)
def test_vjp_matches_finite_differences(conv, ex, opset):
    net, _, lo, hi, _ = _load(conv, ex, opset)
    rng = np.random.default_rng(4)
    for node in _tested_nodes(net):
        rule = rule_of(node)
        shapes = [net.graph[i].shape for i in node.inputs]
        xs = [rng.uniform(lo, hi, (2,) + tuple(s)) for s in shapes]
        y = rule.forward(NP, node, *xs)
        g = rng.normal(size=y.shape)
        grads = rule.vjp(NP, node, g, xs, y)
        h = 1e-6
        for _ in range(3):
            vs = [rng.normal(size=x.shape) for x in xs]
            plus = rule.forward(NP, node, *[x + h * v for x, v in zip(xs, vs)])
            minus = rule.forward(NP, node, *[x - h * v for x, v in zip(xs, vs)])
            fd = float((g * (plus - minus)).sum()) / (2 * h)
            ad = sum(float((gi * v).sum()) for gi, v in zip(grads, vs))
            assert np.isclose(ad, fd, rtol=1e-4, atol=1e-4 * (1 + abs(fd))), node
