"""Imported by worker processes (and the fork server of :mod:`.child`) before their first
instance, so that importing the verifier (numpy, onnx, onnxruntime: seconds) and its first
use (modules imported on first call, numpy's random generators: ~0.15 s) do not count
against an instance's time limit. A fork server forks every instance from this state."""
import gc
import os
import tempfile

import numpy  # noqa: F401
import onnxruntime  # noqa: F401

from .. import verify  # noqa: F401
from . import task

_main = os.environ.pop("ONNXVERIFY_FORKSERVER_MAIN", None)  # see child._context
if _main:
    from multiprocessing import spawn

    try:
        spawn.import_main_path(_main)
    except Exception:  # the children then import it themselves: slower, still correct
        pass

_PROPERTY = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 0.0))
(assert (<= X_0 1.0))
(assert (>= X_1 0.0))
(assert (<= X_1 1.0))
(assert (>= Y_0 2.5))
"""


def warm_up() -> None:
    """Verify a 2-2-2 ReLU network once (unsat by IBP, after the quick attack): the code
    paths every instance takes get imported and initialised here."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(numpy.array(a, numpy.float32), n) for a, n in (
        ([[1, 1], [1, -1]], "W1"), ([0, 0], "b1"), ([[1, -1], [0.5, 0.5]], "W2"), ([0, 0], "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "warm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    with tempfile.TemporaryDirectory(prefix="onnxverify-warm") as d:
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
                  os.path.join(d, "warm.onnx"))
        with open(os.path.join(d, "warm.vnnlib"), "w") as f:
            f.write(_PROPERTY)
        task.verify_task({"onnx": os.path.join(d, "warm.onnx"), "vnnlib": os.path.join(d, "warm.vnnlib"),
                            "timeout": 10.0})
    gc.collect()  # the onnxruntime session and its threads are gone before anything forks


try:
    warm_up()
except Exception:  # a warm-up that fails only costs the first instance its imports
    pass
