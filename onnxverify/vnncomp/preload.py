"""Imported by worker processes before their first instance, so that importing the verifier
(numpy, onnx, onnxruntime: seconds) does not count against an instance's time limit."""
import numpy  # noqa: F401
import onnxruntime  # noqa: F401

from .. import verify  # noqa: F401
from . import runner  # noqa: F401
