"""onnxverify: sound bounds for ONNX neural networks.

>>> import onnxverify as ov
>>> net = ov.load("model.onnx")
>>> b = net.bounds(ov.LinfBall(x0, eps=0.01), method="ibp", spec=ov.margin_spec(label, 10))
"""
from .backend import get_backend
from .bounds import METHODS, STRATEGIES, Bounds, compute_bounds
from .errors import InputError, MemoryLimitError, ModelError, OnnxVerifyError, UnsupportedOpError
from .specs.input_sets import Box, InputSet, LinfBall, LpBall, make_input_set
from .ir import Graph, Node
from .network import Network, load
from .onnx.importer import import_model
from .specs.output import margin_spec
from .bounds.status import LayerStatus, neuron_status
from .report.status import plot_status

__version__ = "0.1.0"

__all__ = [
    "Box", "Bounds", "LayerStatus", "neuron_status", "plot_status", "Graph", "InputError", "InputSet", "LinfBall", "LpBall", "METHODS", "MemoryLimitError",
    "ModelError", "Network", "Node", "OnnxVerifyError", "STRATEGIES", "UnsupportedOpError", "compute_bounds",
    "get_backend", "import_model", "load", "make_input_set", "margin_spec",
]
