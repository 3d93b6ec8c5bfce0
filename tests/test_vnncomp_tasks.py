"""A light module with fake task functions for the runner tests (worker processes import it,
so it imports as little as possible). It holds no tests.

``fake_task`` acts on the model's file name:

* ``hang*``: sleep 60 s (killed at the time limit);
* ``crash*``: the process exits at once (exit code 7);
* ``raise*``: the task function raises;
* ``oom*``: allocates 8 GB (over the worker's address-space limit);
* ``sleep<N>*``: sleep N tenths of a second, then ``unknown``;
* ``killworker*``: record this process's pid in ``<folder>/killworker.pids``, where the
  property file's text names the folder, kill the Ray worker running it (``worker_pid``),
  then hang (the orphaned child must take itself down);
* ``pidhang*``: record this process's pid in ``<folder>/pidhang.pids``, then hang (600 s);
* anything else: ``unknown`` at once.

The message says ``timeout=<t>`` so that tests see the timeout a task got.
"""
from __future__ import annotations

import os
import re
import signal
import time


def fake_task(task, quick=False):
    """``quick``: ``pidhang`` instances return at once (for reruns)."""
    name = os.path.basename(task.get("name") or task["onnx"])
    if quick and name.startswith("pidhang"):
        return {"result": "unknown", "time": 0.01, "message": "quick"}
    if name.startswith("hang"):
        time.sleep(60)
    if name.startswith("crash"):
        os._exit(7)
    if name.startswith("raise"):
        raise RuntimeError("boom")
    if name.startswith("oom"):
        import numpy as np

        np.ones(2**30)  # 8 GB: over the worker's address-space limit
    m = re.match(r"sleep(\d+)", name)
    if m:
        time.sleep(int(m.group(1)) / 10)
    for kind in ("killworker", "pidhang"):
        if name.startswith(kind):
            with open(task["vnnlib"]) as f:
                folder = f.read().strip()
            with open(os.path.join(folder, f"{kind}.pids"), "a") as f:
                f.write(f"{os.getpid()}\n")
            if kind == "killworker":
                os.kill(task["worker_pid"], signal.SIGKILL)
            time.sleep(60 if kind == "killworker" else 600)  # pidhang: only a timeout or a cancel ends it
    return {"result": "unknown", "time": 0.01, "log": [{"step": "fake"}], "message": f"timeout={task['timeout']}"}


def quick_task(task):
    return fake_task(task, quick=True)


def slow_driver(out_dir, csv_path, engine, address=None):
    """A driver for the kill-and-resume test: runs ``fake_task`` over ``csv_path``."""
    from onnxverify.vnncomp import read_instances, run_instances

    run_instances([(read_instances(csv_path), out_dir)], workers=2, progress="lines", fn=fake_task, engine=engine,
                  address=address or None, cpus_per_instance=1)


if __name__ == "__main__":
    import sys

    slow_driver(*sys.argv[1:])
