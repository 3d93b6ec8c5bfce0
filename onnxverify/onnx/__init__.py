"""ONNX in and out: the importer (ONNX -> IR), exact graph passes, and onnxruntime as the
reference for what a model computes."""
from .importer import import_model, load_model
from .reference import OrtModel

__all__ = ["OrtModel", "import_model", "load_model"]
