"""Data sets for certified training (numpy only; no torch import).

Images are kept **raw** in a :class:`Dataset` (``float32`` in ``data_range``, normally
``[0, 1]``, layout ``(N, C, H, W)``); normalisation is applied per batch with
:meth:`Dataset.normalize` *after* augmentation, as torchvision does (``RandomCrop`` pads with
raw zeros, i.e. black, before ``Normalize``).  Perturbation radii are given in raw pixel
units; :meth:`Dataset.eps_normalized` converts them to normalised units (divided by ``std``
per channel) and :meth:`Dataset.input_box` builds the l_inf box around a *normalised* input,
clamped to the normalised image of ``data_range`` per channel (PAPER_NOTES.md §4).

Loaders
-------
* :func:`load_digits_dataset` -- scikit-learn's bundled 8x8 digits (no download).
* :func:`load_mnist` -- the four standard IDX files, gzipped or not.
* :func:`load_cifar10` -- the standard CIFAR-10 "python version" batches.
* :func:`load_dataset` -- dispatch on a spec string: ``digits``, ``mnist:DIR``, ``cifar10:DIR``.

Helpers: :func:`iterate_batches` (shuffling + numpy augmentation), :func:`augment_batch`,
:func:`subset`.

The code lives in :mod:`.dataset` (the container, normalisation, :func:`subset`),
:mod:`.loaders` (digits, MNIST, CIFAR-10, spec dispatch) and :mod:`.batches` (batching and
augmentation); this module is their public face and re-exports them.
"""

from __future__ import annotations

from onnxverify.errors import DataError

from .batches import RngLike, augment_batch, default_crop_padding, iterate_batches  # noqa: F401
from .dataset import Dataset, subset
from .loaders import (  # noqa: F401
    CIFAR10_FILES, CIFAR10_MEAN, CIFAR10_STD, MNIST_FILES, PathLike, load_cifar10, load_dataset, load_digits_dataset,
    load_mnist)

__all__ = [
    "DataError",
    "Dataset",
    "MNIST_FILES",
    "CIFAR10_FILES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "load_digits_dataset",
    "load_mnist",
    "load_cifar10",
    "load_dataset",
    "iterate_batches",
    "augment_batch",
    "subset",
]
