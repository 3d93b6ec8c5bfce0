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
