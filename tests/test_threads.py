"""The thread policy (onnxverify.backend.threads): one pool does the parallel work, the count
is fixed by configure()/$ONNXVERIFY_THREADS/--threads, and a pure MLP never imports torch."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from onnxverify.backend import threads
from onnxverify.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, env=None) -> str:
    """``code`` in a fresh interpreter running this checkout's onnxverify; its stdout."""
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + str(Path(__file__).parent), **(env or {}))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_configure_rejects_zero_and_returns_count():
    with pytest.raises(InputError):
        threads.configure(0)
    old = threads._STATE.copy()
    try:
        assert threads.configure(1) == 1
        assert threads.fixed() and threads.effective_threads() == 1
    finally:
        threads._STATE.update(old)
        threads._STATE["torch"] = None
        threads.apply()


def test_fixed_by_environment_and_pools_follow():
    """$ONNXVERIFY_THREADS fixes the count; with torch in use torch gets it and BLAS one
    thread; before that BLAS gets it (threadpoolctl reads the real pool sizes)."""
    out = _run("""
        import numpy as np
        from threadpoolctl import threadpool_info
        from onnxverify.backend import get_backend, threads
        blas = lambda: sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
        get_backend("numpy")
        print("numpy", threads.effective_threads(), blas())
        bk = get_backend("torch")
        import torch
        print("torch", torch.get_num_threads(), blas())
        threads.configure(1)
        print("one", torch.get_num_threads(), blas())
    """, env={"ONNXVERIFY_THREADS": "2"})
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["numpy"].startswith("2 ")
    assert lines["torch"] == "2 [1]"
    assert lines["one"] == "1 [1]"


def test_cli_threads_option():
    out = _run("""
        import sys
        from click.testing import CliRunner
        from onnxverify.cli import main
        from onnxverify.backend import threads
        r = CliRunner().invoke(main, ["--threads", "1", "ops"])
        print(r.exit_code, threads.fixed(), threads.threads())
    """)
    assert out.split() == ["0", "True", "1"]


def test_mlp_verifies_without_importing_torch():
    """A pure MLP (no convolution) never loads torch, even where torch is installed."""
    out = _run("""
        import sys, tempfile, os, numpy as np, onnx
        import nets
        from onnxverify import load
        from onnxverify.specs.input_sets import Box
        b = nets.Builder(0, (1, 8, 8))  # wide enough that its products are "large" (1 << 18 multiply-adds)
        x = b.flatten("input")
        for n_in, n_out in ((64, 256), (256, 256)):
            x = b.node("Relu", [b.gemm(x, n_in, n_out)])
        model = b.model(b.gemm(x, 256, 10), [10])
        path = os.path.join(tempfile.mkdtemp(), "mlp.onnx")
        onnx.save(model, path)
        net = load(path)
        shape = (2,) + tuple(net.graph.input_shape)
        box = Box(np.zeros(shape, np.float32), np.full(shape, 0.1, np.float32))
        for m in ("ibp", "crown-ibp", "lbp", "crown-lbp", "crown"):
            net.bounds(box, method=m)
        print("torch" in sys.modules)
    """)
    assert out.strip() == "False"
