"""Loaders of the data sets of certified training (numpy only; no torch import).

* :func:`load_digits_dataset` -- scikit-learn's bundled 8x8 digits (no download).
* :func:`load_mnist` -- the four standard IDX files, gzipped or not.
* :func:`load_cifar10` -- the standard CIFAR-10 "python version" batches.
* :func:`load_dataset` -- dispatch on a spec string: ``digits``, ``mnist:DIR``, ``cifar10:DIR``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from onnxverify.errors import DataError

from .dataset import Dataset

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------


def load_digits_dataset(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, no download).

    Pixels (0..16) are divided by 16, giving ``(N, 1, 8, 8)`` in ``[0, 1]``; mean 0, std 1.
    The split is a seeded random permutation; ``test_fraction`` of the images go to the test
    set.  Raises :class:`DataError` (a user error) when scikit-learn is missing.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # a user's fix, not a bug: one error line
        raise DataError(
            "the digits data set needs scikit-learn: pip install scikit-learn (or the 'train' "
            "extra of onnxverify), or give another data set with --data mnist:DIR / cifar10:DIR"
        ) from None
    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    n_test = int(round(x.shape[0] * test_fraction))
    n_test = min(max(n_test, 1), x.shape[0] - 1)
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    return Dataset(
        x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx], y_test=y[test_idx],
        mean=np.zeros(1, np.float32), std=np.ones(1, np.float32), name="digits",
        data_range=(0.0, 1.0), augment=False,
    )


# --------------------------------------------------------------------------------------
# MNIST (IDX files)
# --------------------------------------------------------------------------------------

#: split -> (images file, labels file), without the optional ``.gz`` suffix.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension


def _mnist_expected() -> str:
    names = [n for pair in MNIST_FILES.values() for n in pair]
    return ", ".join(f"{n}[.gz]" for n in names)


def _read_maybe_gzip(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file name says
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip file ({exc})") from exc
    return raw


def _parse_idx(data: bytes, magic: int, ndim: int, path: Path, directory: Path) -> np.ndarray:
    header = 4 + 4 * ndim
    got_magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if got_magic != magic:
        raise DataError(
            f"{path}: bad IDX magic number {got_magic} (expected {magic}); is this the right "
            f"file? MNIST directory {directory} must hold: {_mnist_expected()}"
        )
    if len(data) < header:
        raise DataError(
            f"{path}: too short for an IDX header (in {directory}; expected files: "
            f"{_mnist_expected()})"
        )
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims)) if dims else 0
    if len(data) - header != count:
        raise DataError(
            f"{path}: IDX header says {dims} ({count} bytes of data) but the file holds "
            f"{len(data) - header} bytes (in {directory}; expected files: {_mnist_expected()})"
        )
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(dims)


def _find_mnist_file(directory: Path, base: str) -> Optional[Path]:
    for name in (base, base + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def _resolve_mnist_dir(directory: Path) -> Path:
    """The directory itself, or torchvision's ``MNIST/raw`` layout below it."""
    first = MNIST_FILES["train"][0]
    for cand in (directory, directory / "MNIST" / "raw", directory / "raw"):
        if cand.is_dir() and _find_mnist_file(cand, first) is not None:
            return cand
    return directory


def load_mnist(directory: PathLike) -> Dataset:
    """MNIST from the four standard IDX files in ``directory`` (each gzipped or not).

    Images become ``(N, 1, 28, 28) float32`` in ``[0, 1]`` (bytes / 255); no normalisation
    (mean 0, std 1), no augmentation.  A missing directory or file, a bad magic number or a
    size mismatch raise :class:`DataError` naming the directory and the expected file names.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(
            f"MNIST directory {directory} does not exist (expected it to hold: {_mnist_expected()})"
        )
    root = _resolve_mnist_dir(directory)
    arrays = {}
    for split, (img_base, lbl_base) in MNIST_FILES.items():
        paths = []
        for base in (img_base, lbl_base):
            p = _find_mnist_file(root, base)
            if p is None:
                raise DataError(
                    f"MNIST file {base}[.gz] not found in {directory}; expected files: "
                    f"{_mnist_expected()}"
                )
            paths.append(p)
        images = _parse_idx(_read_maybe_gzip(paths[0]), _IDX_IMAGES_MAGIC, 3, paths[0], directory)
        labels = _parse_idx(_read_maybe_gzip(paths[1]), _IDX_LABELS_MAGIC, 1, paths[1], directory)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"MNIST {split} split in {directory}: {images.shape[0]} images but "
                f"{labels.shape[0]} labels ({paths[0].name}, {paths[1].name})"
            )
        arrays[split] = (
            (images.astype(np.float32) / 255.0)[:, None, :, :],
            labels.astype(np.int64),
        )
    return Dataset(
        x_train=arrays["train"][0], y_train=arrays["train"][1],
        x_test=arrays["test"][0], y_test=arrays["test"][1],
        mean=np.zeros(1, np.float32), std=np.ones(1, np.float32), name="mnist",
        data_range=(0.0, 1.0), augment=False,
    )


# --------------------------------------------------------------------------------------
# CIFAR-10 ("python version" pickled batches)
# --------------------------------------------------------------------------------------

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
_CIFAR_SUBDIR = "cifar-10-batches-py"

# Globals a CIFAR batch pickle may reference (numpy array reconstruction, across numpy 1/2
# module names).  Anything else is refused, so a stray pickle cannot run code.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 3 writes bytes under pickle protocol 2
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _cifar_expected() -> str:
    return ", ".join(CIFAR10_FILES)


def _resolve_cifar_dir(directory: Path) -> Path:
    if (directory / CIFAR10_FILES[0]).is_file():
        return directory
    sub = directory / _CIFAR_SUBDIR
    if sub.is_dir():
        return sub
    return directory


def _load_cifar_batch(path: Path, directory: Path) -> Tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
            TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: not a CIFAR-10 python batch ({exc}); CIFAR-10 directory {directory} must "
            f"hold: {_cifar_expected()} (or a {_CIFAR_SUBDIR}/ folder with them)"
        ) from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")

    def get(key: str):
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
        raise DataError(
            f"{path}: CIFAR-10 batch has no {key!r} entry (keys: {sorted(map(str, batch))}); "
            f"directory {directory}, expected files: {_cifar_expected()}"
        )

    data = np.asarray(get("data"))
    labels = np.asarray(get("labels"), dtype=np.int64).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: b'data' must have shape (N, 3072), got {data.shape}")
    if data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if data.dtype != np.uint8:
        if data.size and (data.min() < 0 or data.max() > 255):
            raise DataError(f"{path}: pixel values outside 0..255")
        data = data.astype(np.uint8)
    x = (data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return x, labels


def load_cifar10(directory: PathLike) -> Dataset:
    """CIFAR-10 from the standard "python version" batches.

    ``directory`` is the folder holding ``data_batch_1`` .. ``data_batch_5`` and
    ``test_batch``, or one containing ``cifar-10-batches-py/``.  Each batch is a pickled dict
    with ``b'data'`` ``(N, 3072) uint8`` (channel-major, 32x32) and ``b'labels'``.  Images
    become ``(N, 3, 32, 32) float32`` in ``[0, 1]``; normalisation mean
    ``(0.4914, 0.4822, 0.4465)``, std ``(0.2023, 0.1994, 0.2010)``; ``augment=True``.
    Only numpy-array globals are accepted when unpickling.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(
            f"CIFAR-10 directory {directory} does not exist (expected it, or a {_CIFAR_SUBDIR}/ "
            f"folder in it, to hold: {_cifar_expected()})"
        )
    root = _resolve_cifar_dir(directory)
    missing = [n for n in CIFAR10_FILES if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 file(s) {', '.join(missing)} not found in {directory}; expected files: "
            f"{_cifar_expected()} (in the directory or in {_CIFAR_SUBDIR}/)"
        )
    train = [_load_cifar_batch(root / n, directory) for n in CIFAR10_FILES[:-1]]
    x_test, y_test = _load_cifar_batch(root / CIFAR10_FILES[-1], directory)
    return Dataset(
        x_train=np.concatenate([b[0] for b in train]), y_train=np.concatenate([b[1] for b in train]),
        x_test=x_test, y_test=y_test,
        mean=np.asarray(CIFAR10_MEAN, np.float32), std=np.asarray(CIFAR10_STD, np.float32),
        name="cifar10", data_range=(0.0, 1.0), augment=True,
    )


# --------------------------------------------------------------------------------------
# Spec dispatch
# --------------------------------------------------------------------------------------

_SPEC_FORMS = '"digits", "mnist:DIR", "cifar10:DIR"'


def load_dataset(spec: str) -> Dataset:
    """Load a data set from a spec string: ``"digits"``, ``"mnist:DIR"`` or ``"cifar10:DIR"``."""
    if not isinstance(spec, str):
        raise DataError(f"data set spec must be a string, one of {_SPEC_FORMS}; got {spec!r}")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "digits" and not arg:
        return load_digits_dataset()
    if kind in ("mnist", "cifar10") and sep and arg.strip():
        loader = load_mnist if kind == "mnist" else load_cifar10
        return loader(arg.strip())
    if kind in ("mnist", "cifar10"):
        raise DataError(f"data set spec {spec!r} needs a directory: use \"{kind}:DIR\"; valid forms: {_SPEC_FORMS}")
    raise DataError(f"unknown data set spec {spec!r}; valid forms: {_SPEC_FORMS}")
