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


# ---------------------------------------------------------------------------------------------
# fuzzing budget: a small fixed one in the normal suite, more with `pytest --fuzz-long`
# ---------------------------------------------------------------------------------------------
FUZZ = {"long": False, "factor": 1}


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the fuzz tests (tests/test_fuzz_*.py) with a long budget, randomised")
    parser.addoption("--fuzz-factor", type=int, default=20,
                     help="with --fuzz-long: how many times the normal suite's fuzz cases to run (default 20)")


def pytest_configure(config):
    FUZZ["long"] = bool(config.getoption("--fuzz-long"))
    FUZZ["factor"] = max(1, int(config.getoption("--fuzz-factor"))) if FUZZ["long"] else 1


def pytest_terminal_summary(terminalreporter):
    """After fuzz tests: command lines run, worker restarts, known bugs met (by signature)."""
    fw = sys.modules.get("fuzz_worker")
    if fw is None or not fw.STATS["cases"]:
        return
    from collections import Counter

    tr = terminalreporter
    tr.section("fuzzing")
    tr.write_line(f"{fw.STATS['cases']} command lines in the worker ({fw.STATS['seconds']:.0f} s), "
                  f"{fw.STATS['restarts']} worker restart(s) (hangs/crashes), "
                  f"{len(fw.FINDINGS)} known bug(s) met; --fuzz-long: {FUZZ['long']} (x{FUZZ['factor']})")
    for sig, n in Counter(str(f[0]) for f in fw.FINDINGS).most_common():
        tr.write_line(f"  {n:5d}  {sig}")


@pytest.fixture(scope="session")
def cli_worker(tmp_path_factory):
    """One worker process for every fuzz test: runs ``onnxverify`` command lines with a time
    limit per case (tests/fuzz_worker.py)."""
    from fuzz_worker import ROOT, Worker

    with Worker(tmp_path_factory.mktemp("fuzz_cwd")) as w:
        w._start()
        assert w.package.startswith(ROOT), f"the worker runs {w.package}, not this checkout"
        yield w


def fuzz_settings(n: int, **kw):
    """Hypothesis settings for a fuzz test with ``n`` cases in the normal suite: derandomised
    there (the same cases every run, so CI is deterministic); ``--fuzz-long`` runs
    ``n * --fuzz-factor`` random cases. Read at import time, after pytest_configure."""
    from hypothesis import HealthCheck, Phase, settings

    long = FUZZ["long"]
    return settings(max_examples=n * FUZZ["factor"], deadline=None, derandomize=not long,
                    database=None if not long else settings.default.database, print_blob=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow "explain"
                    suppress_health_check=list(HealthCheck), **kw)


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
