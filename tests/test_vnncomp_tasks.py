"""A light module with a fake worker task for the runner tests (a spawned worker imports it,
so it imports as little as possible). It holds no tests."""
from __future__ import annotations

import os
import time


def fake_task(task):
    """A worker task driven by the model's file name: hang, crash, raise, oom, or fine."""
    from onnxverify.vnncomp import write_result

    name = os.path.basename(task["onnx"])
    if name.startswith("hang"):
        time.sleep(60)
    if name.startswith("crash"):
        os._exit(7)
    if name.startswith("raise"):
        raise RuntimeError("boom")
    if name.startswith("oom"):
        import numpy as np

        np.ones(2**30)  # 8 GB: over the worker's address-space limit
    write_result(task["result_path"], "unknown")
    return {"result": "unknown", "time": 0.01, "log": [{"step": "fake"}], "message": f"timeout={task['timeout']}"}
