"""ParamRamp custom op: ONNX function, torch export, onnx2torch import."""
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxverify.converters import (
    DOMAIN,
    OP_TYPE,
    VERSION,
    ParamRampError,
    attach_paramramp_function,
    make_paramramp_node,
    paramramp_function,
    paramramp_reference,
    validate_paramramp_node,
)

ort = pytest.importorskip("onnxruntime")

OPSETS = (13, 17, 21)
ETAS = (0.0, 0.01, 0.3)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _model(r, opset, eta=None, sample_shape=(3, 4), attach=True):
    """X (N, *sample) -> ParamRamp(X, r) -> Y, r an initializer."""
    if eta is None:  # no attribute: the function's default (0.0) applies
        node = helper.make_node(OP_TYPE, ["x", "r"], ["y"], domain=DOMAIN, name="pr")
    else:
        node = make_paramramp_node("x", "r", "y", eta=eta, name="pr")
    graph = helper.make_graph(
        [node, helper.make_node("Identity", ["y"], ["out"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *sample_shape])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", *sample_shape])],
        [numpy_helper.from_array(np.asarray(r, np.float32), "r")],
    )
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph, opset_imports=ops, ir_version=max(8, helper.find_min_ir_version_for(ops))
    )
    if attach:
        attach_paramramp_function(model)
    return model


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _n_functions(model):
    return sum(1 for f in model.functions if f.domain == DOMAIN and f.name == OP_TYPE)


def _domain_version(model, domain):
    vs = [imp.version for imp in model.opset_import if imp.domain == domain]
    assert len(vs) <= 1
    return vs[0] if vs else None


def _mixed_r(shape, rng):
    """Non-trivial bend points: some tiny (below the 1e-4 clamp, or near it), some large."""
    r = rng.uniform(0.05, 3.0, size=shape).astype(np.float32)
    flat = r.reshape(-1)
    flat[0::4] = 1e-6      # clamped to 1e-4
    flat[1::4] = 0.02      # small
    flat[2::5] = -0.5      # negative: clamped to 1e-4
    return r


# ---------------------------------------------------------------------------------------
# the ONNX function
# ---------------------------------------------------------------------------------------
def test_function_proto_shape():
    fn = paramramp_function(17)
    assert fn.domain == DOMAIN == "onnxverify" and fn.name == OP_TYPE == "ParamRamp"
    assert list(fn.input) == ["X", "R"] and list(fn.output) == ["Y"]
    assert [a.name for a in fn.attribute_proto] == ["eta"]
    assert fn.attribute_proto[0].f == 0.0
    assert {n.domain for n in fn.node} == {""}
    assert [(o.domain, o.version) for o in fn.opset_import] == [("", 17)]
    assert VERSION == 1


@pytest.mark.parametrize("opset", OPSETS)
def test_function_checker_and_shape_inference(opset):
    rng = np.random.default_rng(opset)
    model = _model(_mixed_r((3, 4), rng), opset, eta=0.01)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    (y,) = [v for v in inferred.graph.value_info if v.name == "y"]  # ParamRamp's output
    dims = y.type.tensor_type.shape.dim
    assert y.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 4]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("eta", ETAS + (None,))
def test_function_matches_reference_in_onnxruntime(opset, eta):
    rng = np.random.default_rng(1000 * opset + int(1000 * (eta or 0)))
    r = _mixed_r((3, 4), rng)
    model = _model(r, opset, eta=eta)
    x = (rng.normal(size=(6, 3, 4)) * 2.0).astype(np.float32)
    x[0, 0, 0] = 5.0  # far right of a tiny r
    y = _run(model, x)
    ref = paramramp_reference(x, r, 0.0 if eta is None else eta)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


def test_eta_is_read_from_node_attribute():
    """Different eta attributes give different outputs (the attribute reference works)."""
    r = np.full((3, 4), 0.5, np.float32)
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    y0 = _run(_model(r, 17, eta=0.0), x)
    y3 = _run(_model(r, 17, eta=0.3), x)
    assert not np.allclose(y0, y3)
    np.testing.assert_allclose(y0, np.clip(x, 0, 0.5), atol=1e-7)
    np.testing.assert_allclose(y3, 0.3 * x + 0.7 * np.clip(x, 0, 0.5), atol=1e-6)


def test_per_channel_r_broadcasts():
    rng = np.random.default_rng(3)
    r = rng.uniform(0.1, 1.0, size=(2, 1, 1)).astype(np.float32)
    model = _model(r, 17, eta=0.1, sample_shape=(2, 3, 3))
    onnx.checker.check_model(model, full_check=True)
    x = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), paramramp_reference(x, r, 0.1), atol=1e-6)
    validate_paramramp_node(model.graph.node[0], r, ["N", 2, 3, 3])


def test_reference_formula():
    x = np.array([[-2.0, -0.5, 0.0, 0.3, 1.0, 4.0]], np.float32)
    r = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], np.float32)
    eta = 0.1
    expect = np.where(x < 0, eta * x, np.where(x <= 1.0, x, eta * x + (1 - eta) * 1.0))
    np.testing.assert_allclose(paramramp_reference(x, r, eta), expect, atol=1e-6)
    # clamp of r at 1e-4
    np.testing.assert_allclose(
        paramramp_reference(np.array([[1.0]], np.float32), np.array([-1.0], np.float32), 0.0),
        [[1e-4]],
        rtol=1e-6,
    )


def test_attach_is_idempotent():
    model = _model(np.ones((3, 4), np.float32), 17, eta=0.01, attach=False)
    assert _n_functions(model) == 0 and _domain_version(model, DOMAIN) is None
    attach_paramramp_function(model)
    once = model.SerializeToString()
    attach_paramramp_function(model)
    attach_paramramp_function(model)
    assert model.SerializeToString() == once
    assert _n_functions(model) == 1
    assert _domain_version(model, DOMAIN) == VERSION
    assert [(o.domain, o.version) for o in model.functions[0].opset_import] == [("", 17)]
    onnx.checker.check_model(model, full_check=True)


def test_attach_keeps_other_functions():
    model = _model(np.ones((3, 4), np.float32), 17, eta=0.01)
    other = helper.make_function(
        "other", "Ident", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    model.functions.append(other)
    attach_paramramp_function(model)
    assert _n_functions(model) == 1
    assert any(f.name == "Ident" for f in model.functions)


def test_reattach_after_manual_delete():
    rng = np.random.default_rng(5)
    r = _mixed_r((3, 4), rng)
    model = _model(r, 17, eta=0.3)
    del model.functions[:]
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    with pytest.raises(Exception):  # onnxruntime has no kernel for the bare custom op
        _run(model, x)
    attach_paramramp_function(model)
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(_run(model, x), paramramp_reference(x, r, 0.3), atol=1e-6)


def test_reattach_after_version_conversion():
    rng = np.random.default_rng(6)
    r = _mixed_r((3, 4), rng)
    model = _model(r, 13, eta=0.01)
    converted = onnx.version_converter.convert_version(model, 17)
    assert _domain_version(converted, "") == 17
    # the converter drops model-local functions (and may drop the custom opset import)
    assert _n_functions(converted) <= 1
    attach_paramramp_function(converted)
    assert _n_functions(converted) == 1
    assert _domain_version(converted, DOMAIN) == VERSION
    # the function is rebuilt for the model's new opset
    assert [(o.domain, o.version) for o in converted.functions[0].opset_import] == [("", 17)]
    onnx.checker.check_model(converted, full_check=True)
    x = rng.normal(size=(3, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(converted, x), paramramp_reference(x, r, 0.01), atol=1e-6)


def test_reattach_after_opset_import_removed():
    model = _model(np.ones((3, 4), np.float32), 17, eta=0.01)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    attach_paramramp_function(model)
    assert _domain_version(model, DOMAIN) == VERSION
    onnx.checker.check_model(model, full_check=True)


def test_onnx_side_does_not_import_torch():
    code = (
        "import sys, onnxverify.converters, onnxverify.converters.paramramp_onnx; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------
# validation errors
# ---------------------------------------------------------------------------------------
def test_validate_ok_returns_params():
    node = make_paramramp_node("x", "r", "y", eta=0.25)
    r = np.array([[0.5, -1.0], [2.0, 3.0]], np.float32)
    p = validate_paramramp_node(node, numpy_helper.from_array(r, "r"), ["N", 2, 2])
    assert p.eta == pytest.approx(0.25)
    np.testing.assert_array_equal(p.r, r)
    np.testing.assert_allclose(p.r_effective, np.maximum(r, 1e-4))
    # unknown sample dims are not checked
    assert validate_paramramp_node(node, r, [None, "h", 2]).r_effective is None


@pytest.mark.parametrize(
    "r_shape,x_shape",
    [
        ((3,), ["N", 4]),          # wrong size
        ((4, 3), ["N", 3, 4]),     # transposed
        ((1, 3, 4), ["N", 3, 4]),  # has a batch axis
        ((2, 3, 4), ["N", 3, 4]),  # too many axes
        ((3, 2, 2), ["N", 3, 4, 4]),
    ],
)
def test_wrong_shaped_r_raises(r_shape, x_shape):
    node = make_paramramp_node("x", "r", "y", eta=0.01, name="act1")
    with pytest.raises(ParamRampError, match=r"R .* has shape .* sample shape"):
        validate_paramramp_node(node, np.ones(r_shape, np.float32), x_shape)


def test_error_is_a_value_error():
    assert issubclass(ParamRampError, ValueError)


@pytest.mark.parametrize("eta", [-0.01, -1.0])
def test_negative_eta_raises(eta):
    with pytest.raises(ParamRampError, match="eta must be >= 0"):
        make_paramramp_node("x", "r", "y", eta=eta)
    node = helper.make_node(OP_TYPE, ["x", "r"], ["y"], domain=DOMAIN, eta=eta, name="bad")
    with pytest.raises(ParamRampError, match=r"'bad'.*eta must be >= 0"):
        validate_paramramp_node(node, np.ones(3, np.float32), ["N", 3])


def test_eta_above_one_raises():
    node = helper.make_node(OP_TYPE, ["x", "r"], ["y"], domain=DOMAIN, eta=1.5)
    with pytest.raises(ParamRampError, match="eta must be <= 1"):
        validate_paramramp_node(node, np.ones(3, np.float32), ["N", 3])


def test_other_validation_errors():
    r = np.ones(3, np.float32)
    with pytest.raises(ParamRampError, match="not a onnxverify::ParamRamp"):
        validate_paramramp_node(helper.make_node("Relu", ["x"], ["y"]), r, ["N", 3])
    node = make_paramramp_node("x", "r", "y")
    with pytest.raises(ParamRampError, match="float tensor"):
        validate_paramramp_node(node, np.ones(3, np.int64), ["N", 3])
    with pytest.raises(ParamRampError, match="non-finite"):
        validate_paramramp_node(node, np.array([1.0, np.nan, 1.0], np.float32), ["N", 3])
    one_input = helper.make_node(OP_TYPE, ["x"], ["y"], domain=DOMAIN)
    with pytest.raises(ParamRampError, match="2 inputs"):
        validate_paramramp_node(one_input, r, ["N", 3])


# ---------------------------------------------------------------------------------------
# torch: module, export round trip, onnx2torch
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prt():
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from onnxverify.converters import paramramp_torch

    return paramramp_torch


def _ramp(prt, shape, rng, eta=0.01):
    import torch

    m = prt.ParamRamp(shape, eta=eta)
    with torch.no_grad():
        m.r.copy_(torch.from_numpy(_mixed_r(shape, rng)))
    return m


def _nets(prt):
    import torch
    from torch import nn

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mlp = nn.Sequential(
        nn.Linear(6, 8), _ramp(prt, (8,), rng), nn.Linear(8, 5), _ramp(prt, (5,), rng), nn.Linear(5, 3)
    )
    conv = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=1, padding=1),
        _ramp(prt, (4, 5, 5), rng),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    )
    return {"mlp": (mlp, (6,)), "conv": (conv, (2, 5, 5))}


def test_torch_module_forward_matches_reference(prt):
    import torch

    rng = np.random.default_rng(1)
    m = _ramp(prt, (3, 4), rng, eta=0.3)
    x = torch.randn(5, 3, 4) * 2
    ref = paramramp_reference(x.numpy(), m.r.detach().numpy(), 0.3)
    np.testing.assert_allclose(m(x).detach().numpy(), ref, atol=1e-6)
    m.eta = 0.005  # schedules set eta directly
    assert m.eta == 0.005 and isinstance(m.eta, float)
    with pytest.raises(ParamRampError):
        m.eta = -0.1
    assert isinstance(m.r, torch.nn.Parameter) and m.r.shape == (3, 4)
    assert prt.ParamRamp(7).r.shape == (7,)


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_export_round_trip(prt, tmp_path, name):
    import torch

    onnx2torch = pytest.importorskip("onnx2torch")
    net, sample = _nets(prt)[name]
    ramps = [m for m in net.modules() if isinstance(m, prt.ParamRamp)]
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # opset 17 must be reached
        model = prt.export_onnx(net, torch.randn(1, *sample), path, opset=17)
    assert net.training  # training flags restored
    assert all(m.training for m in net.modules())

    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert _domain_version(loaded, "") == 17
    assert _domain_version(loaded, DOMAIN) == VERSION
    assert _n_functions(loaded) == 1
    assert [i.name for i in loaded.graph.input] == ["input"]
    assert [o.name for o in loaded.graph.output] == ["output"]
    nodes = [n for n in loaded.graph.node if n.domain == DOMAIN]
    assert len(nodes) == len(ramps) and all(n.op_type == OP_TYPE for n in nodes)
    assert not any(n.op_type in ("Relu", "LeakyRelu", "Min", "Max", "Clip") for n in loaded.graph.node)
    inits = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    for node, m in zip(nodes, ramps):
        assert node.input[1] in inits
        np.testing.assert_array_equal(inits[node.input[1]], m.r.detach().numpy())
        assert inits[node.input[1]].shape == m.shape
        eta = [a.f for a in node.attribute if a.name == "eta"]
        assert eta == [pytest.approx(m.eta, rel=1e-6)]
    assert model.SerializeToString() == loaded.SerializeToString()

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, *sample) * 2
        with torch.no_grad():
            expect = net(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expect, atol=1e-5, rtol=0)

    # onnx2torch back to torch
    back = onnx2torch.convert(loaded)
    back_ramps = [m for m in back.modules() if isinstance(m, prt.ParamRamp)]
    assert len(back_ramps) == len(ramps)
    for b, m in zip(back_ramps, ramps):
        assert b.eta == pytest.approx(m.eta, rel=1e-6)
        assert isinstance(b.r, torch.nn.Parameter) and b.r.requires_grad
        np.testing.assert_array_equal(b.r.detach().numpy(), m.r.detach().numpy())
    for batch in (1, 7):
        x = torch.randn(batch, *sample) * 2
        with torch.no_grad():
            np.testing.assert_allclose(back(x).numpy(), net(x).numpy(), atol=1e-5, rtol=0)

    # r is trainable: gradients reach every ParamRamp's r
    x = torch.randn(64, *sample) * 3
    back.zero_grad()
    out = back(x)
    (out * torch.randn_like(out)).sum().backward()
    for b in back_ramps:
        assert b.r.grad is not None and b.r.grad.abs().sum() > 0
    params = dict(back.named_parameters())
    assert any(p is b.r for b in back_ramps for p in params.values())


def test_export_uses_current_eta(prt, tmp_path):
    import torch
    from torch import nn

    rng = np.random.default_rng(2)
    ramp = _ramp(prt, (4,), rng, eta=0.3)
    net = nn.Sequential(nn.Linear(3, 4), ramp)
    ramp.eta = 0.005  # schedule step
    model = prt.export_onnx(net, torch.randn(2, 3), tmp_path / "e.onnx")
    (node,) = [n for n in model.graph.node if n.domain == DOMAIN]
    assert node.attribute[0].name == "eta"
    assert node.attribute[0].f == pytest.approx(0.005, rel=1e-6)
    x = torch.randn(5, 3)
    got = _run(model, x.numpy())
    np.testing.assert_allclose(got, net(x).detach().numpy(), atol=1e-5)


def test_export_plain_relu_net(prt, tmp_path):
    import torch
    from torch import nn

    onnx2torch = pytest.importorskip("onnx2torch")
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model = prt.export_onnx(net, torch.randn(1, 4), tmp_path / "relu.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert not any(n.domain == DOMAIN for n in model.graph.node)
    assert _domain_version(model, "") == 17
    for batch in (1, 7):
        x = torch.randn(batch, 4)
        with torch.no_grad():
            np.testing.assert_allclose(_run(model, x.numpy()), net(x).numpy(), atol=1e-5)
    back = onnx2torch.convert(model)
    x = torch.randn(3, 4)
    with torch.no_grad():
        np.testing.assert_allclose(back(x).numpy(), net(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("opset", [18, 21])
def test_export_other_opsets(prt, opset):
    import torch

    net, sample = _nets(prt)["conv"]
    model = prt.export_onnx(net, torch.randn(2, *sample), None, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert _domain_version(model, "") == opset
    x = torch.randn(3, *sample)
    with torch.no_grad():
        np.testing.assert_allclose(_run(model, x.numpy()), net(x).numpy(), atol=1e-5)


def test_export_static_batch(prt):
    import torch

    net, sample = _nets(prt)["mlp"]
    model = prt.export_onnx(net, torch.randn(4, *sample), None, dynamic_batch=False)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_onnx2torch_imports_handbuilt_model(prt):
    """A model written with the ONNX helpers (per-channel R, eta attribute absent)."""
    import torch

    onnx2torch = pytest.importorskip("onnx2torch")
    rng = np.random.default_rng(4)
    r = rng.uniform(0.1, 1.0, size=(2, 1, 1)).astype(np.float32)
    model = _model(r, 17, eta=None, sample_shape=(2, 3, 3))
    back = onnx2torch.convert(model)
    (ramp,) = [m for m in back.modules() if isinstance(m, prt.ParamRamp)]
    assert ramp.eta == 0.0 and ramp.r.shape == (2, 1, 1) and ramp.r.requires_grad
    x = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), _run(model, x), atol=1e-6)


def test_onnx2torch_rejects_bad_node(prt):
    onnx2torch = pytest.importorskip("onnx2torch")
    model = _model(np.ones((4, 3), np.float32), 17, eta=0.01)  # R transposed vs X (N,3,4)
    with pytest.raises(ParamRampError, match="sample shape"):
        onnx2torch.convert(model)


def test_register_is_idempotent(prt):
    pytest.importorskip("onnx2torch")
    from onnx2torch.node_converters import registry

    assert prt.register_onnx2torch_converter() is True
    assert prt.register_onnx2torch_converter() is True
    desc = registry.OperationDescription(domain=DOMAIN, operation_type=OP_TYPE, version=VERSION)
    assert desc in registry._CONVERTER_REGISTRY
