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
