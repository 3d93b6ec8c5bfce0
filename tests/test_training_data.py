"""Tests for onnxverify.training.data (numpy-only data loading, normalisation, batching)."""

from __future__ import annotations

import gzip
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxverify.training import data as D
from onnxverify.training.data import DataError, Dataset

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MNIST_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def test_module_does_not_import_torch():
    # The data module must stay numpy-only (torch may be imported by other tests; check the
    # module's own imports instead of sys.modules).
    for name in ("data.py", "dataset.py", "loaders.py", "batches.py"):  # data.py re-exports the others
        src = (Path(D.__file__).parent / name).read_text()
        assert "import torch" not in src and "from torch" not in src, name


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def test_digits_shapes_and_range():
    pytest.importorskip("sklearn")
    ds = D.load_digits_dataset()
    n = ds.x_train.shape[0] + ds.x_test.shape[0]
    assert n == 1797
    assert ds.x_test.shape[0] == round(1797 * 0.2)
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_test.shape[1:] == (1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert ds.x_train.max() == pytest.approx(1.0)  # 16/16 occurs
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    np.testing.assert_array_equal(ds.mean, [0.0])
    np.testing.assert_array_equal(ds.std, [1.0])
    assert ds.data_range == (0.0, 1.0) and ds.augment is False and ds.name == "digits"


def test_digits_split_is_seeded():
    pytest.importorskip("sklearn")
    a = D.load_digits_dataset(seed=3)
    b = D.load_digits_dataset(seed=3)
    c = D.load_digits_dataset(seed=4)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_test, c.y_test)
    half = D.load_digits_dataset(test_fraction=0.5)
    assert abs(half.x_train.shape[0] - half.x_test.shape[0]) <= 1


def test_digits_via_spec():
    pytest.importorskip("sklearn")
    ds = D.load_dataset("digits")
    assert ds.name == "digits" and ds.x_train.shape[1:] == (1, 8, 8)


# --------------------------------------------------------------------------------------
# MNIST IDX files
# --------------------------------------------------------------------------------------


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def _tiny_mnist(root: Path, gz, n_train=5, n_test=3, size=28, seed=0):
    """Write the four IDX files; ``gz`` is a bool or a list of 4 bools."""
    rng = np.random.default_rng(seed)
    gz = [gz] * 4 if isinstance(gz, bool) else list(gz)
    root.mkdir(parents=True, exist_ok=True)
    xtr = rng.integers(0, 256, size=(n_train, size, size), dtype=np.uint8)
    ytr = rng.integers(0, 10, size=n_train, dtype=np.uint8)
    xte = rng.integers(0, 256, size=(n_test, size, size), dtype=np.uint8)
    yte = rng.integers(0, 10, size=n_test, dtype=np.uint8)
    xtr[0, 0, 0], xtr[0, 0, 1] = 0, 255
    arrays = [(xtr, 2051), (ytr, 2049), (xte, 2051), (yte, 2049)]
    for name, (arr, magic), g in zip(MNIST_NAMES, arrays, gz):
        _write(root / name, _idx_bytes(arr, magic), g)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("gz", [True, False, [True, False, False, True]])
def test_mnist_loader(tmp_path, gz):
    xtr, ytr, xte, yte = _tiny_mnist(tmp_path, gz)
    ds = D.load_mnist(tmp_path)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train[:, 0], xtr / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(ds.x_test[:, 0], xte / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ds.y_train, ytr)
    np.testing.assert_array_equal(ds.y_test, yte)
    assert ds.x_train[0, 0, 0, 0] == 0.0 and ds.x_train[0, 0, 0, 1] == 1.0
    np.testing.assert_array_equal(ds.mean, [0.0])
    np.testing.assert_array_equal(ds.std, [1.0])
    assert ds.augment is False and ds.name == "mnist"


def test_mnist_via_spec_and_str_path(tmp_path):
    _tiny_mnist(tmp_path, True)
    ds = D.load_dataset(f"mnist:{tmp_path}")
    assert ds.x_train.shape[0] == 5
    assert D.load_mnist(str(tmp_path)).x_test.shape[0] == 3


def test_mnist_torchvision_layout(tmp_path):
    _tiny_mnist(tmp_path / "MNIST" / "raw", True)
    assert D.load_mnist(tmp_path).x_train.shape == (5, 1, 28, 28)


def _assert_names_files(msg: str, directory: Path):
    assert str(directory) in msg
    for name in MNIST_NAMES:
        assert name in msg


def test_mnist_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as info:
        D.load_mnist(missing)
    _assert_names_files(str(info.value), missing)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("drop", MNIST_NAMES)
def test_mnist_missing_file(tmp_path, drop):
    _tiny_mnist(tmp_path, True)
    (tmp_path / (drop + ".gz")).unlink()
    with pytest.raises(DataError) as info:
        D.load_mnist(tmp_path)
    _assert_names_files(str(info.value), tmp_path)


def test_mnist_empty_directory(tmp_path):
    with pytest.raises(DataError) as info:
        D.load_mnist(tmp_path)
    _assert_names_files(str(info.value), tmp_path)


def test_mnist_bad_magic(tmp_path):
    _tiny_mnist(tmp_path, False)
    # swap in a labels file where the images file should be
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)
    with pytest.raises(DataError) as info:
        D.load_mnist(tmp_path)
    msg = str(info.value)
    _assert_names_files(msg, tmp_path)
    assert "magic" in msg and "2051" in msg


def test_mnist_bad_magic_long_file(tmp_path):
    _tiny_mnist(tmp_path, True)
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[3] = 0x03  # 2051, the images magic, in a labels file
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError) as info:
        D.load_mnist(tmp_path)
    msg = str(info.value)
    _assert_names_files(msg, tmp_path)
    assert "magic" in msg and "2049" in msg


def test_mnist_corrupt_gzip(tmp_path):
    _tiny_mnist(tmp_path, True)
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:12])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        D.load_mnist(tmp_path)


def test_mnist_truncated_file(tmp_path):
    _tiny_mnist(tmp_path, False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        D.load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    _tiny_mnist(tmp_path, False)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(4, np.uint8), 2049), False)
    with pytest.raises(DataError, match="5 images but 4 labels"):
        D.load_mnist(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST files not present")
def test_real_mnist_counts():
    ds = D.load_mnist(SHARED_MNIST)
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert set(np.unique(ds.y_test)) == set(range(10))
    # well-known facts about MNIST: first training label is 5, first test label is 7
    assert ds.y_train[0] == 5 and ds.y_test[0] == 7


# --------------------------------------------------------------------------------------
# CIFAR-10 python batches
# --------------------------------------------------------------------------------------


def _tiny_cifar(root: Path, n=3, seed=0, protocol=2):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        out[name] = (data, labels)
    return out


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_loader(tmp_path, protocol):
    raw = _tiny_cifar(tmp_path, protocol=protocol)
    ds = D.load_cifar10(tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    # layout: 1024 red values, then green, then blue, each row-major 32x32
    d1, l1 = raw["data_batch_1"]
    np.testing.assert_allclose(ds.x_train[0, 0, 0, :], d1[0, :32] / 255.0, atol=1e-7)
    np.testing.assert_allclose(ds.x_train[0, 1, 0, 0], d1[0, 1024] / 255.0, atol=1e-7)
    np.testing.assert_allclose(ds.x_train[0, 2, 1, 3], d1[0, 2048 + 32 + 3] / 255.0, atol=1e-7)
    d5, l5 = raw["data_batch_5"]
    np.testing.assert_allclose(ds.x_train[12:].reshape(3, -1), d5 / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.y_train[:3], l1)
    np.testing.assert_array_equal(ds.y_test, raw["test_batch"][1])
    np.testing.assert_allclose(ds.mean, [0.4914, 0.4822, 0.4465])
    np.testing.assert_allclose(ds.std, [0.2023, 0.1994, 0.2010])
    assert ds.augment is True and ds.name == "cifar10"


def test_cifar_legacy_numpy_module_names(tmp_path):
    # The distributed batches were pickled by Python 2 / numpy 1 and name
    # numpy.core.multiarray._reconstruct; numpy 2 writes numpy._core instead.
    _tiny_cifar(tmp_path)
    for name in D.CIFAR10_FILES:
        p = tmp_path / name
        raw = p.read_bytes()
        assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
        p.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    ds = D.load_cifar10(tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32)


def test_cifar_subdirectory_and_spec(tmp_path):
    _tiny_cifar(tmp_path / "cifar-10-batches-py")
    assert D.load_cifar10(tmp_path).x_train.shape[0] == 15
    assert D.load_dataset(f"cifar10:{tmp_path}").x_test.shape[0] == 3


def test_cifar_missing_directory(tmp_path):
    with pytest.raises(DataError) as info:
        D.load_cifar10(tmp_path / "absent")
    msg = str(info.value)
    assert str(tmp_path / "absent") in msg
    assert "data_batch_1" in msg and "test_batch" in msg and "cifar-10-batches-py" in msg


def test_cifar_missing_file(tmp_path):
    _tiny_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        D.load_cifar10(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "data_batch_3" in msg and "data_batch_5" in msg


def test_cifar_bad_batch(tmp_path):
    _tiny_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="test_batch"):
        D.load_cifar10(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DataError, match="3072"):
        D.load_cifar10(tmp_path)


class _Evil:
    def __reduce__(self):
        return (sys.exit, ("should never run",))


def test_cifar_refuses_foreign_globals(tmp_path):
    _tiny_cifar(tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="not allowed"):
        D.load_cifar10(tmp_path)


# --------------------------------------------------------------------------------------
# load_dataset errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["imagenet", "mnist", "cifar10:", "svhn:/tmp", ""])
def test_load_dataset_bad_spec(spec):
    with pytest.raises(DataError) as info:
        D.load_dataset(spec)
    msg = str(info.value)
    assert "digits" in msg and "mnist:DIR" in msg and "cifar10:DIR" in msg


# --------------------------------------------------------------------------------------
# Normalisation, eps and input boxes
# --------------------------------------------------------------------------------------


def _cifar_like(n=4, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3, 6, 6), dtype=np.float32)
    x[0] = 0.0
    x[1] = 1.0
    y = np.arange(n) % 10
    return Dataset(x, y, x.copy(), y.copy(), D.CIFAR10_MEAN, D.CIFAR10_STD, "cifar-like", augment=True)


def test_normalize_roundtrip():
    ds = _cifar_like()
    xn = ds.normalize(ds.x_train)
    mean = np.array(D.CIFAR10_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(D.CIFAR10_STD, np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(xn, (ds.x_train - mean) / std, rtol=1e-6)
    assert xn.dtype == np.float32
    np.testing.assert_allclose(ds.denormalize(xn), ds.x_train, atol=1e-6)
    # a single (C, H, W) image works too
    np.testing.assert_allclose(ds.normalize(ds.x_train[2]), xn[2], rtol=1e-6)


def test_eps_normalized():
    ds = _cifar_like()
    e = ds.eps_normalized(8 / 255)
    assert e.shape == (3, 1, 1)
    np.testing.assert_allclose(e.ravel(), (8 / 255) / np.array(D.CIFAR10_STD), rtol=1e-6)
    with pytest.raises(ValueError):
        ds.eps_normalized(-0.1)


def test_input_box_clamped_to_normalized_range():
    ds = _cifar_like()
    eps = 8 / 255
    xn = ds.normalize(ds.x_train)
    lo, hi = ds.input_box(xn, eps)
    assert lo.shape == xn.shape and hi.shape == xn.shape
    assert lo.dtype == np.float32 and hi.dtype == np.float32
    nlo, nhi = ds.normalized_range()
    assert nlo.shape == (3, 1, 1)
    np.testing.assert_allclose(nlo.ravel(), -np.array(D.CIFAR10_MEAN) / np.array(D.CIFAR10_STD), rtol=1e-6)
    np.testing.assert_allclose(nhi.ravel(), (1 - np.array(D.CIFAR10_MEAN)) / np.array(D.CIFAR10_STD), rtol=1e-6)
    assert np.all(lo <= xn) and np.all(xn <= hi)
    assert np.all(lo >= nlo - 1e-6) and np.all(hi <= nhi + 1e-6)
    # black image: lower bound is exactly the normalised 0, upper is x + eps/std
    np.testing.assert_allclose(lo[0], np.broadcast_to(nlo, lo[0].shape), rtol=1e-6)
    np.testing.assert_allclose(hi[0], xn[0] + ds.eps_normalized(eps), rtol=1e-5)
    # white image: upper bound is exactly the normalised 1
    np.testing.assert_allclose(hi[1], np.broadcast_to(nhi, hi[1].shape), rtol=1e-6)
    # in raw units the box is [x - eps, x + eps] clipped to [0, 1]
    np.testing.assert_allclose(ds.denormalize(lo), np.clip(ds.x_train - eps, 0, 1), atol=1e-5)
    np.testing.assert_allclose(ds.denormalize(hi), np.clip(ds.x_train + eps, 0, 1), atol=1e-5)


def test_input_box_unnormalized():
    x = np.linspace(0, 1, 2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    ds = Dataset(x, np.zeros(2), x, np.zeros(2), [0.0], [1.0], "plain")
    lo, hi = ds.input_box(x, 0.3)
    np.testing.assert_allclose(lo, np.clip(x - 0.3, 0, 1), atol=1e-7)
    np.testing.assert_allclose(hi, np.clip(x + 0.3, 0, 1), atol=1e-7)
    lo0, hi0 = ds.input_box(x, 0.0)
    np.testing.assert_array_equal(lo0, x)
    np.testing.assert_array_equal(hi0, x)


def test_dataset_validation():
    x = np.zeros((3, 1, 4, 4), np.float32)
    with pytest.raises(ValueError):
        Dataset(x, np.zeros(2), x, np.zeros(3), [0], [1], "bad")  # label count
    with pytest.raises(ValueError):
        Dataset(x[:, 0], np.zeros(3), x[:, 0], np.zeros(3), [0], [1], "bad")  # not NCHW
    with pytest.raises(ValueError):
        Dataset(x, np.zeros(3), x, np.zeros(3), [0], [0], "bad")  # std 0
    with pytest.raises(ValueError):
        Dataset(x, np.zeros(3), np.zeros((3, 1, 5, 5)), np.zeros(3), [0], [1], "bad")
    ds = Dataset(x, [0, 1, 2], x, [0, 1, 2], 0.5, 0.25, "scalar-stats")
    assert ds.mean.shape == (1,) and ds.std.shape == (1,)
    assert ds.y_train.dtype == np.int64 and "scalar-stats" in repr(ds)


# --------------------------------------------------------------------------------------
# Augmentation and batching
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 1, 8, 8), (5, 3, 32, 32), (4, 1, 28, 28)])
def test_augment_preserves_shape_and_dtype(shape):
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    before = x.copy()
    out = D.augment_batch(x, rng)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(x, before)  # input untouched
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("size,pad", [(8, 2), (15, 2), (16, 4), (32, 4)])
def test_augment_crop_is_a_padded_window(size, pad):
    assert D.default_crop_padding(size, size) == pad
    rng = np.random.default_rng(1)
    x = rng.random((40, 2, size, size), dtype=np.float32) + 1.0  # no zeros in the image
    out = D.augment_batch(x, np.random.default_rng(2), flip=False)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = set()
    for i in range(x.shape[0]):
        hits = [
            (oy, ox)
            for oy in range(2 * pad + 1)
            for ox in range(2 * pad + 1)
            if np.array_equal(out[i], padded[i, :, oy:oy + size, ox:ox + size])
        ]
        assert hits, f"sample {i} is not a window of the padded image"
        offsets.update(hits)
    assert len(offsets) > 3  # offsets really are random


def test_augment_flip_only():
    x = np.random.default_rng(0).random((64, 1, 5, 5), dtype=np.float32)
    out = D.augment_batch(x, np.random.default_rng(3), padding=0)
    flipped = 0
    for i in range(64):
        if np.array_equal(out[i], x[i, :, :, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out[i], x[i])
    assert 10 < flipped < 54


def test_augment_is_reproducible():
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    a = D.augment_batch(x, np.random.default_rng(5))
    b = D.augment_batch(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, x)


def _labelled(n=23):
    # every pixel of image i equals i, so labels can be checked against images
    x = np.broadcast_to(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), (n, 1, 8, 8)).copy()
    y = np.arange(n, dtype=np.int64)
    return x, y


def test_iterate_batches_order_and_sizes():
    x, y = _labelled()
    batches = list(D.iterate_batches(x, y, 5, shuffle=False, rng=None))
    assert [b[0].shape[0] for b in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    batches = list(D.iterate_batches(x, y, 5, shuffle=False, rng=None, drop_last=True))
    assert [b[0].shape[0] for b in batches] == [5, 5, 5, 5]
    with pytest.raises(ValueError):
        list(D.iterate_batches(x, y, 0, shuffle=False, rng=None))


def test_iterate_batches_shuffle_covers_everything_once():
    x, y = _labelled()
    seen = []
    for xb, yb in D.iterate_batches(x, y, 4, shuffle=True, rng=np.random.default_rng(0)):
        assert xb.dtype == np.float32 and yb.dtype == np.int64
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)  # pairs stay aligned
        seen.extend(yb.tolist())
    assert sorted(seen) == list(range(23)) and seen != list(range(23))
    # same seed, same order; int seeds work too
    a = [yb.tolist() for _, yb in D.iterate_batches(x, y, 4, shuffle=True, rng=7)]
    b = [yb.tolist() for _, yb in D.iterate_batches(x, y, 4, shuffle=True, rng=7)]
    assert a == b


def test_iterate_batches_augment():
    x = np.random.default_rng(0).random((10, 3, 32, 32), dtype=np.float32)
    y = np.arange(10)
    before = x.copy()
    out = list(D.iterate_batches(x, y, 4, shuffle=True, rng=np.random.default_rng(1), augment=True))
    assert [xb.shape for xb, _ in out] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert all(xb.dtype == np.float32 for xb, _ in out)
    np.testing.assert_array_equal(x, before)


def test_dataset_batches_use_augment_flag():
    ds = _cifar_like(n=6)
    xs = np.concatenate([xb for xb, _ in ds.train_batches(4, rng=0, shuffle=False)])
    assert xs.shape == ds.x_train.shape and not np.array_equal(xs, ds.x_train)
    ds_plain = D.subset(ds, 6, 6)
    ds_plain.augment = False
    xs = np.concatenate([xb for xb, _ in ds_plain.train_batches(4, rng=0, shuffle=False)])
    np.testing.assert_array_equal(xs, ds.x_train)
    xt = np.concatenate([xb for xb, _ in ds.test_batches(4)])
    np.testing.assert_array_equal(xt, ds.x_test)


def test_subset():
    x, y = _labelled(30)
    ds = Dataset(x, y, x[:20], y[:20], [0.0], [1.0], "lab")
    small = D.subset(ds, 7, 4)
    assert small.x_train.shape[0] == 7 and small.x_test.shape[0] == 4
    np.testing.assert_array_equal(small.y_train, np.arange(7))
    assert small.name == "lab" and small.x_train.dtype == np.float32
    rnd = D.subset(ds, 7, 4, seed=0)
    assert rnd.x_train.shape[0] == 7 and not np.array_equal(rnd.y_train, np.arange(7))
    np.testing.assert_array_equal(rnd.x_train[:, 0, 0, 0], rnd.y_train)
    full = D.subset(ds, None, 100)
    assert full.x_train.shape[0] == 30 and full.x_test.shape[0] == 20
    small.x_train[0] = 99.0
    assert ds.x_train[0, 0, 0, 0] == 0.0  # a copy, not a view
