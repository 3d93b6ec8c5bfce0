"""An ONNX model as a trainable torch module *and* the verifier's IR, tied parameter by parameter.

:class:`TrainableNetwork` converts an ONNX model twice:

* ``module`` -- ``onnx2torch.convert(model)``: the clean forward pass, the optimiser's
  parameters, BatchNorm running statistics, export back to ONNX;
* ``graph`` -- ``onnxverify.onnx.import_model(model, fuse=False)``: the verifier's IR,
  whose parameters are replaced by the torch module's tensors (:meth:`sync`), so that
  :func:`onnxverify.bounds.compute_bounds` run with ``backend="torch"`` differentiates into
  the weights, the BatchNorm affine parameters and ParamRamp's ``r``.  There is no second
  bound engine: every bound comes from :mod:`onnxverify.bounds`.

IR nodes are matched to torch modules through the ONNX node that produced them: an IR node
is named after its ONNX output tensor, onnx2torch names its submodule after the ONNX node
(``OnnxGraph`` unique names).  Each IR node's op rule says how it ties to that module
(``OpRule.torch_tie`` in :mod:`onnxverify.ops`): Conv and Linear take the module's weight and
bias, BatchNorm-made Affine nodes compute ``scale``/``shift`` from gamma, beta and the batch
statistics of the last clean forward pass (train mode) or the running statistics (eval mode),
ParamRamp takes ``r`` and ``eta``, LeakyRelu its slope.

IR nodes with constant parameters that onnx2torch keeps as buffers (e.g. ``Sub``/``Div``
normalisation layers, ``MatMul`` weights) stay constants on both sides: they are not trained.
At construction every tied parameter is checked against the imported values, so a wrong
match raises instead of training something else.

Shapes: inputs ``(B, *input_shape)`` float32; bounds of the margin spec ``(B, n - 1)``.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import numpy as np
import onnx
import torch
from torch import nn

from onnxverify.backend import get_backend
from onnxverify.bounds import compute_bounds, fold_spec_interval
from onnxverify.bounds.ibp import interval_bounds
from onnxverify.specs.input_sets import Box
from onnxverify.onnx.importer import import_model
from onnxverify.ops import evaluate, rule_of
from onnxverify.specs.output import margin_spec

__all__ = ["TorchBox", "TrainableNetwork", "R_LARGE", "available_methods"]

#: bend point that makes ParamRamp act as LeakyReLU(eta) (clean epochs before r is initialised)
R_LARGE = 1.0e4


def available_methods() -> Tuple[str, ...]:
    """Bound methods the installed verifier offers (``onnxverify.bounds.METHODS``)."""
    import onnxverify.bounds as b

    return tuple(b.METHODS)


def _accepts(kwarg: str) -> bool:
    """Whether ``compute_bounds`` takes keyword ``kwarg`` (e.g. ``intersect_ibp``: training
    mixes the pure CROWN-IBP bound with IBP's itself, as CROWN-IBP training does)."""
    import inspect

    return kwarg in inspect.signature(compute_bounds).parameters


class TorchBox(Box):
    """An l_inf box whose ``lower``/``upper`` stay torch tensors ``(B, *input_shape)``.

    :class:`onnxverify.specs.Box` converts to float64 NumPy; training needs the bounds
    on the device, in float32, with autograd.  Only ``box()``, ``batched()`` and ``center``
    are used by the bound methods.
    """

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor):  # noqa: D107 - no __post_init__ on purpose
        if lower.shape != upper.shape:
            raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} shapes differ")
        self.lower = lower
        self.upper = upper

    def box(self):
        return self.lower, self.upper

    def batched(self, input_shape):
        if tuple(self.lower.shape[1:]) != tuple(input_shape):
            raise ValueError(f"box has sample shape {tuple(self.lower.shape[1:])}, the model input is {tuple(input_shape)}")
        return self


def _onnx2torch_names(model: onnx.ModelProto) -> Dict[str, str]:
    """ONNX output tensor name -> onnx2torch submodule name (its unique node names)."""
    from onnx2torch.onnx_graph import OnnxGraph

    out = {}
    for unique, node in OnnxGraph(model.graph).nodes.items():
        for v in node.output_values:
            out[v] = unique
    return out


class TrainableNetwork:
    """See the module docstring.  ``device``: a torch device string ("cpu", "cuda")."""

    def __init__(self, model: onnx.ModelProto, device: str = "cpu"):
        import onnx2torch

        from onnxverify.converters import paramramp_torch  # noqa: F401  (registers the onnx2torch converter)

        self.onnx_model = model
        self.device = torch.device(device)
        self.module = onnx2torch.convert(model).to(self.device)
        self.graph = import_model(model, fuse=False)
        self.bk = get_backend("torch" if self.device.type == "cpu" else f"torch:{self.device}")
        self.input_shape = tuple(self.graph.input_shape)
        self.num_classes = int(np.prod(self.graph.output_shape))
        self._bind()
        self._check_binding()

    # ---- binding ------------------------------------------------------------------------
    def _bind(self) -> None:
        """Ask each IR node's rule for its tie to the torch module of the same ONNX node."""
        names = _onnx2torch_names(self.onnx_model)
        self.ties = []  # (node, TorchTie)
        frozen = []
        for node in self.graph.computed:
            onnx_out = node.name.rstrip("'")
            sub = None
            if onnx_out in names:
                try:
                    sub = self.module.get_submodule(names[onnx_out])
                except AttributeError:
                    sub = None
            rule = rule_of(node)
            tie = rule.torch_tie(node, sub)
            if tie is None:
                if node.params and rule.affine:
                    frozen.append(f"{node.source} ({node.op})")
                continue
            self.ties.append((node, tie))
        if frozen:
            warnings.warn("these nodes have constant parameters that onnx2torch keeps as buffers; they are not "
                          "trained: " + ", ".join(frozen), UserWarning, stacklevel=3)
        #: (IR node, tie kind, torch module) per tied node
        self.bindings = [(node, tie.kind, tie.module) for node, tie in self.ties]
        self.activation_nodes = [n for n in self.graph.computed if rule_of(n).elementwise and not rule_of(n).affine]
        self.paramramps = [m for (_, k, m) in self.bindings if k == "paramramp"]
        self.leakys = [m for (_, k, m) in self.bindings if k == "leaky"]

    def _check_binding(self) -> None:
        """Every tied parameter must equal the value the importer read from the ONNX file."""
        was = self.module.training
        self.module.eval()
        try:
            for node, tie in self.ties:
                want = {k: np.asarray(v, dtype=np.float64) for k, v in node.params.items()}
                for key, value in tie.params().items():
                    if key not in want:
                        continue
                    g = value.detach().cpu().double().numpy()
                    w = want[key]
                    try:
                        g = np.broadcast_to(g.reshape(w.shape) if g.size == w.size else g, w.shape)
                    except ValueError:
                        g = None
                    if g is None or not np.allclose(g, w, rtol=1e-4, atol=1e-5):
                        raise ValueError(f"cannot tie IR node {node.source} ({node.op}) to the torch module: "
                                         f"parameter {key!r} differs from the ONNX file")
        finally:
            self.module.train(was)

    def sync(self) -> None:
        """Point the IR's parameters and attributes at the torch module's current state."""
        for node, tie in self.ties:
            node.attrs.update(tie.attrs())
            node.params.update(tie.params())

    # ---- schedules ----------------------------------------------------------------------
    def set_eta(self, eta: float) -> None:
        """Leak slope of every LeakyReLU and ParamRamp (the eta schedule)."""
        for m in self.paramramps:
            m.eta = float(eta)
        for m in self.leakys:
            m.negative_slope = float(eta)

    @property
    def has_paramramp(self) -> bool:
        return bool(self.paramramps)

    def activation_kind(self) -> str:
        """``paramramp`` / ``leaky`` when such activations are tied, else the activations' op
        names (``relu`` for a ReLU net), or ``none``."""
        kinds = {k for _, k, _ in self.bindings}
        for kind in ("paramramp", "leaky"):
            if kind in kinds:
                return kind
        return ",".join(sorted({n.op for n in self.activation_nodes})).lower() or "none"

    # ---- forward and bounds -------------------------------------------------------------
    def parameters(self):
        return self.module.parameters()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Clean logits ``(B, classes)`` (train-mode BN records the batch statistics)."""
        return self.module(x).reshape(x.shape[0], -1)

    def train(self, mode: bool = True) -> "TrainableNetwork":
        self.module.train(mode)
        return self

    def eval(self) -> "TrainableNetwork":
        return self.train(False)

    def margin_bounds(self, lower: torch.Tensor, upper: torch.Tensor, labels: torch.Tensor, method: str = "ibp",
                      strategy: Optional[str] = None, keep_env: bool = False):
        """Lower bounds of the margins ``y_label - y_j`` (``j != label``), ``(B, n - 1)``.

        ``lower``/``upper``: the input box ``(B, *input_shape)``.  ``method="ibp"`` runs the
        verifier's interval pass and folds the margin spec into the last affine layers
        (:func:`onnxverify.bounds.fold_spec_interval`, exactly what ``compute_bounds`` does);
        other methods go through :func:`onnxverify.bounds.compute_bounds`.  With
        ``keep_env`` the IBP bounds of every node are returned too (``{name: (l, u)}``),
        else ``None``.  Call after a clean forward on the batch when BN is in train mode.
        """
        self.sync()
        box = TorchBox(lower, upper)
        C = margin_spec(labels.detach().cpu().numpy(), self.num_classes)
        if method == "ibp":
            env = interval_bounds(self.bk, self.graph, box, np.float32)
            lo, _ = fold_spec_interval(self.bk, self.graph, env, C, np.float32)
            return lo, (env if keep_env else None)
        if method not in available_methods():
            raise ValueError(f"bound method {method!r} is not available in this onnxverify "
                             f"(available: {', '.join(available_methods())})")
        kwargs = {"intersect_ibp": False} if _accepts("intersect_ibp") else {}
        b = compute_bounds(self.graph, box, method, spec=C, strategy=strategy, backend=self.bk, dtype=np.float32,
                           **kwargs)
        return b.lower, None

    def ir_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The IR's forward on torch tensors (equals :meth:`__call__` in eval mode)."""
        self.sync()
        return evaluate(self.graph, x, backend=self.bk).reshape(x.shape[0], -1)
