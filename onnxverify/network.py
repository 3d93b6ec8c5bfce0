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
from .ops import evaluate


@dataclass
class CheckReport:
    """Result of comparing IR forward with onnxruntime on random inputs."""

    max_abs_error: float
    max_rel_error: float
    n_samples: int
    ok: bool
    n_nonfinite: int = 0  # output values that are Inf/NaN in onnxruntime (and the same in the IR when ok)
    #: the test: ok iff every |err| <= atol + rtol * |ref|; ``worst`` is max |err| / (atol + rtol * |ref|)
    rtol: float = 0.0
    atol: float = 0.0
    worst: float = 0.0


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
        """``x`` as ``(batch, *input_shape)`` float32.

        Accepted: one sample of exactly ``input_shape``, a batch ``(B, *input_shape)``, or flat
        C-order vectors ``(n_inputs,)`` / ``(B, n_inputs)`` (VNN-LIB's ``X_i`` order). Any
        other shape — also one with the right number of values, such as a CHW image for an
        HWC model — raises :class:`~onnxverify.errors.InputError` naming both shapes.
        """
        from .specs.input_sets import _batch

        x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise InputError(f"input has dtype {x.dtype}, expected real numbers (float or int)")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InputError(f"input contains {int((~np.isfinite(x)).sum())} NaN/Inf value(s)")
        xb = _batch("input", x, self.input_shape)
        if not np.isfinite(xb.astype(np.float32)).all():
            raise InputError("input has values beyond the float32 range (|x| > 3.4e38)")
        return xb.astype(np.float32)

    def forward(self, x, backend=None, dtype=np.float32):
        """Network output ``(batch, *output_shape)`` for ``x`` ``(batch, *input_shape)``."""
        bk = get_backend(backend)
        xb = x if (bk.name != "numpy" and bk.is_array(x)) else self.prepare_input(x)
        y = evaluate(self.graph, bk.asarray(xb, dtype=dtype), bk)
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
            # overflow (inf - inf in float32 on huge weights) can leave NaN: the sound reading
            # of an unknown bound is -inf / +inf; ``info["nan_bounds"]`` counts them
            bad = np.isnan(b.lower) | np.isnan(b.upper)
            if bad.any():
                b.lower = np.where(np.isnan(b.lower), -np.inf, b.lower)
                b.upper = np.where(np.isnan(b.upper), np.inf, b.upper)
                b.info["nan_bounds"] = int(bad.sum())
        return b

    def neuron_status(self, input_set, method="ibp", strategy=None, **kw):
        """Per-layer neuron statuses; see :func:`onnxverify.bounds.status.neuron_status`."""
        from .bounds.status import neuron_status

        return neuron_status(self, input_set, method, strategy, **kw)

    def check(self, n_samples: int = 8, rtol: float = 1e-5, atol: float = 1e-5, seed: int = 0, low=-1.0, high=1.0) -> CheckReport:
        """Compare IR forward with onnxruntime on random inputs in ``[low, high]``.

        Raises :class:`~onnxverify.errors.InputError` for ``n_samples < 1`` or ``low > high``
        and :class:`~onnxverify.errors.ModelError` when onnxruntime cannot run the model.
        """
        from .errors import ModelError
        from .onnx.reference import OrtModel

        if int(n_samples) < 1:
            raise InputError(f"the check needs at least one sample, got {n_samples}")
        if not (np.isfinite(low) and np.isfinite(high) and low <= high):
            raise InputError(f"the check's input range [{low}, {high}] is not a finite interval")
        if not (rtol >= 0 and atol >= 0):
            raise InputError(f"tolerances must be >= 0, got rtol {rtol}, atol {atol}")
        n_samples = int(n_samples)
        try:
            import onnxruntime

            onnxruntime.set_default_logger_severity(4)  # failures become one ModelError line, not a log dump
            ort = OrtModel(self.model if self.model is not None else self.path)
        except Exception as e:
            raise ModelError(f"onnxruntime cannot load the model: {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:400]}") from None
        try:
            ref = ort(np.random.default_rng(seed).uniform(low, high, (n_samples,) + self.input_shape)
                      .astype(np.float32))
        except Exception as e:
            raise ModelError(f"onnxruntime cannot run the model on inputs of shape {(n_samples,) + self.input_shape}: "
                             f"{type(e).__name__}: {' '.join(str(e).split())[:400]}") from None
        x = np.random.default_rng(seed).uniform(low, high, (n_samples,) + self.input_shape).astype(np.float32)
        with np.errstate(all="ignore"):  # overflowing weights: compared below, not warned about
            ours = self.forward(x).reshape(n_samples, -1).astype(np.float64)
            ref = np.asarray(ref).reshape(n_samples, -1).astype(np.float64)
            if ref.shape != ours.shape:
                raise ModelError(f"onnxruntime gives {ref.shape[1]} output values per sample, the IR {ours.shape[1]}")
            # equal infinities and NaN in both count as agreement; the finite values are compared
            same = (ours == ref) | (np.isnan(ours) & np.isnan(ref))
            err = np.where(same, 0.0, np.abs(ours - ref))
            err = np.where(np.isnan(err), np.inf, err)
            rel = err / (np.abs(np.where(np.isfinite(ref), ref, 0.0)) + 1e-12)
            allowed = atol + rtol * np.abs(np.where(np.isfinite(ref), ref, 0.0))
            ok = bool(np.all(same | (err <= allowed)))
            worst = float(np.max(np.where(same, 0.0, err / np.maximum(allowed, 1e-300))))
        return CheckReport(float(err.max()), float(rel.max()), n_samples, ok, int((~np.isfinite(ref)).sum()),
                           rtol, atol, worst)

    def without_index_output(self):
        """``(network, nodes)``: when the output is an index or a code of one (rules with
        ``index_output``: ArgMax, TopK's indices, OneHot after an ArgMax), the network up to
        the input of the first such node, and those nodes, outermost first; else
        ``(self, ())``. The CLI bounds the logits, not the index."""
        from .ops import rule_of

        out, stripped = self.graph[self.graph.output], []
        while getattr(rule_of(out), "index_output", False) and self.graph[out.inputs[0]] is not self.graph.input:
            stripped.append(out)
            out = self.graph[out.inputs[0]]
        if not stripped:
            return self, ()
        keep = self.graph.ancestors(out.name)
        return Network(Graph([n for n in self.graph.nodes if n.name in keep], out.name), self.path), tuple(stripped)

    def index_output_parts(self):
        """``[(node, start, stop)]``: the flat output positions (``Y_start .. Y_stop-1``) that
        are indices, each with the node computing them (see
        :func:`onnxverify.ops.modelio.index_parts`)."""
        from .ops.modelio import index_parts

        return index_parts(self.graph)

    def __repr__(self):
        name = os.path.basename(self.path) if self.path else "<model>"
        return f"Network({name}, input {self.input_shape}, output {self.output_shape}, {len(self.graph)} nodes)"


def load(path) -> Network:
    """Import an ONNX file. Raises :class:`~onnxverify.errors.ModelError` with one line."""
    from .onnx.importer import import_model, load_model

    model = load_model(path)
    return Network(import_model(model), os.fspath(path), model)
