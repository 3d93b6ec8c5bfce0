"""The user-facing :class:`Network`: an imported model with forward, bounds and checks."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .backend import get_backend
from .bounds import Bounds, compute_bounds
from .errors import InputError
from .specs.input_sets import InputSet
from .ir import Graph


@dataclass
class CheckReport:
    """Result of comparing IR forward with onnxruntime on random inputs."""

    max_abs_error: float
    max_rel_error: float
    n_samples: int
    ok: bool


class Network:
    """An ONNX model imported into the IR.

    ``input_shape``/``output_shape`` are per-sample shapes (no batch axis).
    """

    def __init__(self, graph: Graph, path: str | None = None, model=None):
        self.graph = graph
        self.path = path
        self.model = model

    @property
    def input_shape(self) -> tuple:
        return self.graph.input_shape

    @property
    def output_shape(self) -> tuple:
        return self.graph.output_shape

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape, dtype=np.int64))

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.output_shape, dtype=np.int64))

    def prepare_input(self, x) -> np.ndarray:
        """``x`` as ``(batch, *input_shape)`` float32, accepting an unbatched or flat sample."""
        from .specs.input_sets import _batch

        x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise InputError(f"input has dtype {x.dtype}, expected numbers")
        if not np.isfinite(x).all():
            raise InputError(f"input contains {int((~np.isfinite(x)).sum())} NaN/Inf value(s)")
        return _batch("input", x, self.input_shape).astype(np.float32)

    def forward(self, x, backend=None, dtype=np.float32):
        """Network output ``(batch, *output_shape)`` for ``x`` ``(batch, *input_shape)``."""
        bk = get_backend(backend)
        xb = x if (bk.name != "numpy" and bk.is_array(x)) else self.prepare_input(x)
        y = self.graph.forward(bk.asarray(xb, dtype=dtype), bk)
        return bk.to_numpy(y) if backend is None or get_backend(backend).name == "numpy" else y

    def bounds(self, input_set: InputSet, method: str = "ibp", spec=None, strategy: str | None = None,
               backend=None, dtype=np.float32, max_memory: int | None = None, intersect_ibp: bool = True) -> Bounds:
        """Sound bounds of the output (or of ``spec @ output``, ``spec`` ``(K, n_out)`` or
        ``(batch, K, n_out)``) for all inputs in ``input_set``. Arrays come back as NumPy
        unless a non-NumPy backend is asked for. See :func:`onnxverify.bounds.compute_bounds`."""
        b = compute_bounds(self.graph, input_set, method, spec, strategy, backend, dtype, max_memory, intersect_ibp)
        bk = get_backend(backend)
        if bk.name == "numpy" or backend is None:
            b.lower, b.upper = bk.to_numpy(b.lower), bk.to_numpy(b.upper)
        return b

    def neuron_status(self, input_set, method="ibp", strategy=None, **kw):
        """Per-layer neuron statuses; see :func:`onnxverify.bounds.status.neuron_status`."""
        from .bounds.status import neuron_status

        return neuron_status(self, input_set, method, strategy, **kw)

    def check(self, n_samples: int = 8, rtol: float = 1e-5, atol: float = 1e-5, seed: int = 0, low=-1.0, high=1.0) -> CheckReport:
        """Compare IR forward with onnxruntime on random inputs in ``[low, high]``."""
        from .onnx.reference import OrtModel

        ort = OrtModel(self.model if self.model is not None else self.path)
        x = np.random.default_rng(seed).uniform(low, high, (n_samples,) + self.input_shape).astype(np.float32)
        ours = self.forward(x).reshape(n_samples, -1).astype(np.float64)
        ref = ort(x).reshape(n_samples, -1).astype(np.float64)
        err = np.abs(ours - ref)
        return CheckReport(float(err.max()), float((err / (np.abs(ref) + 1e-12)).max()), n_samples,
                           bool(np.all(err <= atol + rtol * np.abs(ref))))

    def __repr__(self):
        name = os.path.basename(self.path) if self.path else "<model>"
        return f"Network({name}, input {self.input_shape}, output {self.output_shape}, {len(self.graph)} nodes)"


def load(path) -> Network:
    """Import an ONNX file. Raises :class:`~onnxverify.errors.ModelError` with one line."""
    from .onnx.importer import import_model, load_model

    model = load_model(path)
    return Network(import_model(model), os.fspath(path), model)
