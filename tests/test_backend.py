"""The array backends agree: conv, its adjoint, pooling (numpy kernels vs torch)."""
import numpy as np
import pytest

from onnxverify.backend import BackendError, get_backend

torch = pytest.importorskip("torch")
NP, TH = get_backend("numpy"), get_backend("torch")

CONVS = [((1, 1), (0, 0, 0, 0), (1, 1), 1), ((2, 2), (1, 0, 2, 1), (1, 1), 1), ((1, 2), (1, 1, 1, 1), (2, 1), 2),
         ((3, 3), (0, 2, 1, 0), (1, 1), 4)]


@pytest.fixture(params=["im2col", "torch-kernels"])
def numpy_kernels(request, monkeypatch):
    """The numpy backend's own im2col kernels, and torch's kernels on numpy memory."""
    monkeypatch.setenv("ONNXVERIFY_NUMPY_KERNELS", "1" if request.param == "im2col" else "0")
    return request.param


@pytest.mark.parametrize("stride,pads,dilation,groups", CONVS)
def test_conv_and_adjoint(stride, pads, dilation, groups, numpy_kernels):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 9, 8))
    w = rng.normal(size=(8, 4 // groups, 3, 2))
    y_np = NP.conv2d(x, w, stride, pads, dilation, groups)
    y_th = TH.to_numpy(TH.conv2d(TH.asarray(x), TH.asarray(w), stride, pads, dilation, groups))
    np.testing.assert_allclose(y_np, y_th, rtol=1e-10, atol=1e-10)
    g = rng.normal(size=y_np.shape)
    back_np = NP.conv_transpose2d(g, w, stride, pads, dilation, groups, (9, 8))
    back_th = TH.to_numpy(TH.conv_transpose2d(TH.asarray(g), TH.asarray(w), stride, pads, dilation, groups, (9, 8)))
    np.testing.assert_allclose(back_np, back_th, rtol=1e-10, atol=1e-10)
    # adjoint identity <conv(x), g> == <x, conv^T(g)>
    np.testing.assert_allclose((y_np * g).sum(), (x * back_np).sum(), rtol=1e-10)


def test_pooling_kernels():
    """Window kernels on padded inputs (the pooling rules' geometry is tested through the ops)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 7, 6))
    for kernel, stride, dilation in [((2, 2), (2, 2), (1, 1)), ((3, 2), (2, 1), (1, 1)), ((2, 3), (1, 2), (2, 1))]:
        a = NP.max_pool2d(x, kernel, stride, dilation)
        b = TH.to_numpy(TH.max_pool2d(TH.asarray(x), kernel, stride, dilation))
        np.testing.assert_allclose(a, b)
        if dilation == (1, 1):
            a = NP.sum_pool2d(x, kernel, stride)
            b = TH.to_numpy(TH.sum_pool2d(TH.asarray(x), kernel, stride))
            np.testing.assert_allclose(a, b, rtol=1e-10)


def test_cupy_skips_cleanly_or_works():
    try:
        cp = get_backend("cupy")
    except BackendError as e:
        assert "cupy" in str(e)
        pytest.skip("CuPy / GPU not available")
    x = np.random.default_rng(0).normal(size=(1, 2, 5, 5))
    w = np.random.default_rng(1).normal(size=(3, 2, 3, 3))
    y = cp.to_numpy(cp.conv2d(cp.asarray(x), cp.asarray(w), (1, 1), (1, 1, 1, 1), (1, 1), 1))
    np.testing.assert_allclose(y, NP.conv2d(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1), rtol=1e-6)


def test_unknown_backend():
    with pytest.raises(BackendError):
        get_backend("tensorflow")


# ---- the CPU forms of the torch transposed convolution (matmul / fold / channels-last) -------------
CT_CASES = [  # (y shape, w shape, stride, dilation, groups)
    ((5, 6, 1, 1), (6, 3, 3, 3), (1, 1), (1, 1), 1),
    ((4, 8, 1, 1), (8, 16, 4, 4), (2, 2), (1, 1), 1),
    ((3, 6, 1, 1), (6, 2, 3, 2), (2, 1), (2, 3), 1),
    ((3, 8, 4, 5), (8, 3, 3, 3), (1, 1), (1, 1), 1),
    ((2, 8, 3, 3), (8, 5, 4, 4), (2, 2), (1, 1), 1),
    ((2, 6, 4, 3), (6, 2, 3, 2), (2, 1), (2, 1), 1),
    ((3, 8, 5, 4), (8, 16, 3, 3), (1, 2), (1, 1), 1),
    ((2, 8, 3, 4), (8, 9, 2, 3), (3, 2), (1, 2), 1),
    ((2, 8, 4, 4), (8, 2, 3, 3), (1, 1), (1, 1), 4),
    ((2, 6, 1, 1), (6, 4, 2, 2), (2, 2), (1, 1), 2),
    ((2, 12, 3, 2), (12, 3, 3, 2), (2, 1), (1, 2), 3),
]


def _forms_for(ys, ws, dilation, groups):
    forms = ["plain", "channels_last"]
    if groups == 1:
        forms.append("fold")
        if ys[2:] == (1, 1) and dilation == (1, 1):
            forms.append("matmul")
    return forms


@pytest.mark.parametrize("ys,ws,stride,dilation,groups", CT_CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_conv_transpose_forms_equal(ys, ws, stride, dilation, groups, dtype, tol):
    """Every CPU form equals torch's plain kernel (values and gradients), with and without
    padding, and the form the backend picks is one of them."""
    from onnxverify.backend.torch_backend import conv_transpose_form

    gen = torch.Generator().manual_seed(sum(ys) + sum(ws))
    y = torch.randn(ys, generator=gen, dtype=dtype, requires_grad=True)
    w = torch.randn(ws, generator=gen, dtype=dtype)
    ref = TH.conv_transpose2d_full(y, w, stride, dilation, groups, form="plain")
    g = torch.randn(ref.shape, generator=gen, dtype=dtype)
    (ref_grad,) = torch.autograd.grad((ref * g).sum(), y)
    scale = float(ref.detach().abs().max())
    forms = _forms_for(ys, ws, dilation, groups)
    assert conv_transpose_form(y, w, stride, dilation, groups) in forms
    for form in forms:
        out = TH.conv_transpose2d_full(y, w, stride, dilation, groups, form=form)
        assert out.shape == ref.shape, form
        assert float((out - ref).abs().max()) <= tol * scale, form
        (grad,) = torch.autograd.grad((out * g).sum(), y)
        assert float((grad - ref_grad).abs().max()) <= tol * float(ref_grad.abs().max()), form
    # the padded / cropped adjoint of conv2d: the picked form against the numpy im2col kernel
    H = (ys[2] - 1) * stride[0] + dilation[0] * (ws[2] - 1) + 1
    W = (ys[3] - 1) * stride[1] + dilation[1] * (ws[3] - 1) + 1
    for pads, hw in [((0, 0, 0, 0), (H, W)), ((1, 0, 0, 1), (H - 1, W)), ((1, 2, 1, 0), (H, W - 1))]:
        if min(hw) < 1 or hw[0] + pads[0] + pads[2] < H or hw[1] + pads[1] + pads[3] < W:
            continue
        got = TH.to_numpy(TH.conv_transpose2d(y.detach(), w, stride, pads, dilation, groups, hw))
        want = NP.conv_transpose2d(y.detach().numpy(), w.numpy(), stride, pads, dilation, groups, hw)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale * 10)


def test_conv_transpose_form_choice():
    from onnxverify.backend.torch_backend import conv_transpose_form

    y1, y4 = torch.zeros(2, 8, 1, 1), torch.zeros(2, 8, 4, 4)
    s1, s2 = (1, 1), (2, 2)
    assert conv_transpose_form(y1, torch.zeros(8, 16, 3, 3), s2, (1, 1), 1) == "matmul"
    assert conv_transpose_form(y1, torch.zeros(8, 16, 3, 3), s2, (2, 1), 1) == "channels_last"
    assert conv_transpose_form(y4, torch.zeros(8, 3, 3, 3), s1, (1, 1), 1) == "fold"
    assert conv_transpose_form(y4, torch.zeros(8, 16, 3, 3), s2, (1, 1), 1) == "channels_last"
    assert conv_transpose_form(y4, torch.zeros(8, 16, 3, 3), s1, (1, 1), 1) == "plain"
    assert conv_transpose_form(y4, torch.zeros(8, 2, 3, 3), s2, (1, 1), 4) == "channels_last"
    assert TH.conv_transpose2d_full(y4, torch.ones(8, 16, 3, 3), s2, (1, 1), 1).is_contiguous()
