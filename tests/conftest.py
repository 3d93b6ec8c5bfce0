import csv
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"


def benchmark_networks():
    """Every distinct ONNX network of the shared benchmark folder (empty when absent)."""
    if not BENCH.is_dir():
        return []
    return sorted(BENCH.glob("*/onnx/*.onnx"))


def benchmark_instances():
    if not BENCH.is_dir():
        return []
    rows = []
    with open(BENCH / "ground_truth.csv") as f:
        for r in csv.DictReader(f):
            rows.append(r)
    return rows


needs_bench = pytest.mark.skipif(not BENCH.is_dir(), reason="../shared/benchmarks is absent")


def torch_available():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


BACKENDS = ["numpy", pytest.param("torch", marks=pytest.mark.skipif(not torch_available(), reason="torch not installed"))]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def one_blas_thread():
    """These tests do many small matrix products: one BLAS thread keeps them fast and their
    time steady on a busy machine (multi-threaded BLAS thrashes there)."""
    try:  # the numpy backend convolves with torch when it is installed
        import torch
    except ImportError:
        torch = None
    n = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    try:
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(1, user_api="blas"):
                yield
    finally:
        if torch:
            torch.set_num_threads(n)
