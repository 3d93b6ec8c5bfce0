"""Imported by worker processes (and the fork server of :mod:`.child`) before their first
instance, so that importing the verifier (numpy, onnx, onnxruntime: seconds) does not count
against an instance's time limit."""
import os

import numpy  # noqa: F401
import onnxruntime  # noqa: F401

from .. import verify  # noqa: F401
from . import runner  # noqa: F401

_main = os.environ.pop("ONNXVERIFY_FORKSERVER_MAIN", None)  # see child._context
if _main:
    from multiprocessing import spawn

    try:
        spawn.import_main_path(_main)
    except Exception:  # the children then import it themselves: slower, still correct
        pass
