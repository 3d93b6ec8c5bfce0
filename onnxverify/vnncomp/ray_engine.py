"""The Ray engine: one Ray task per instance, on a laptop, a workstation or a cluster.

Each instance is one task with declared resources (``num_cpus``, fractional ``num_gpus``).
Inside it the verification runs in a killable child process (:mod:`.child`), killed at the
instance's hard timeout. Model and property bytes go through Ray's object store (one
``ray.put`` per distinct file), and each node keeps them in a content-addressed cache
folder, so worker nodes need no shared filesystem. Tasks return verdicts to the driver,
which alone writes the results (:class:`~onnxverify.vnncomp.sink.ResultSink`) as they come.

Faults: a task whose Ray worker or node dies (or whose child process dies on its own) runs
once more, then becomes an ``error`` row naming the cause; Ray's own retries are off so
that the driver counts attempts. Ctrl-C cancels every task of the run (force: the workers
running them are killed, and their children follow) before the driver exits.
"""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import time

from .sink import ResultSink, record_fault

__all__ = ["run_ray", "connect", "check_resources", "materialize"]

#: The cache folder for model and property files on every node.
CACHE_DIR = os.path.join(tempfile.gettempdir(), f"onnxverify-ray-cache-{os.getuid() if hasattr(os, 'getuid') else 0}")


def connect(address=None):
    """``ray.init`` for this run. Returns ``(ray, started_here)``; ``started_here`` is False
    when the process was already connected (then the caller must not shut Ray down)."""
    try:
        import ray
    except ImportError:
        from ..errors import InputError

        raise InputError("--engine ray needs Ray: pip install 'onnxverify[distributed]'") from None
    if ray.is_initialized():
        return ray, False
    import logging

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    if address in (None, "local"):
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as e:
        from ..errors import InputError

        raise InputError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    return ray, True


def check_resources(ray, cpus: float, gpus: float) -> int:
    """Fail early (one line) when no alive node offers ``cpus`` CPUs and ``gpus`` GPUs at
    once (Ray would queue such tasks forever). Returns how many instances fit at once."""
    from ..errors import InputError

    fits, offer = 0, []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        c, g = res.get("CPU", 0.0), res.get("GPU", 0.0)
        offer.append(f"{c:g} CPU/{g:g} GPU")
        n = int(c // cpus) if cpus > 0 else 10**6
        if gpus > 0:
            n = min(n, int(g // gpus + 1e-9))
        fits += n
    if fits == 0:
        raise InputError(f"no node of the Ray cluster offers {cpus:g} CPU(s) and {gpus:g} GPU(s) per instance "
                         f"(nodes: {', '.join(offer) or 'none'})")
    return fits


def materialize(entry) -> str:
    """Local path of a file shipped as ``(sha256, name, [object_ref])``: written once per node
    into :data:`CACHE_DIR` (atomically), fetched from the object store only when missing."""
    sha, name, (ref,) = entry
    path = os.path.join(CACHE_DIR, sha[:32], name)
    if not os.path.exists(path):
        import ray

        data = ray.get(ref)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def _instance(task: dict, fn_bytes: bytes, files: tuple, cpus: float, gpus: float) -> dict:
    """The body of one Ray task (runs on a worker node)."""
    from .child import run_in_child
    from .records import version
    from .task import THREAD_VARS, default_memory_limit

    import ray

    where = {"engine": "ray", "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id()[:16],
             "pid": os.getpid()}
    if task["version"] != version():
        return {"result": "error", "time": 0.0, "where": where,
                "message": f"node {where['host']} has onnxverify {version()}, the driver {task['version']}"}
    paths = [materialize(f) for f in files]
    for k in THREAD_VARS:  # read by BLAS when the fork server imports numpy
        os.environ.setdefault(k, str(max(1, int(cpus))))
    mem = task.get("mem_limit")
    if mem == "auto":  # the node's memory shared by the instances that fit on it
        mem = None if gpus else default_memory_limit(max(1, int((os.cpu_count() or 1) // max(cpus, 1e-3))))
    child_task = {k: v for k, v in task.items() if k not in ("mem_limit", "grace", "version")}
    child_task.update(onnx=paths[0], vnnlib=paths[1], max_memory=int(0.6 * mem) if mem else None,
                      worker_pid=os.getpid())
    out = run_in_child(fn_bytes, child_task, task["timeout"] + task["grace"], mem)
    out["where"] = where
    out["paths"] = paths  # the driver writes its own paths into the message instead
    return out


class _Files:
    """One object-store copy per distinct file, dropped when no remaining task needs it."""

    def __init__(self, ray, tasks):
        self.ray, self.refs, self.left = ray, {}, {}
        for t in tasks:
            for p in (t["onnx"], t["vnnlib"]):
                self.left[p] = self.left.get(p, 0) + 1

    def entry(self, path):
        if path not in self.refs:
            with open(path, "rb") as f:
                data = f.read()
            self.refs[path] = (hashlib.sha256(data).hexdigest(), os.path.basename(path), [self.ray.put(data)])
        return self.refs[path]

    def done(self, task):
        for p in (task["onnx"], task["vnnlib"]):
            self.left[p] -= 1
            if self.left[p] == 0:
                self.refs.pop(p, None)


def run_ray(tasks, sink: ResultSink, fn, address=None, cpus: float = 1.0, gpus: float = 0.0,
            grace: float = 2.0, mem_limit="auto", max_in_flight: int | None = None) -> None:
    """Run ``tasks`` (driver task dicts) as Ray tasks; every finished instance goes to
    ``sink.finish``. ``max_in_flight``: tasks submitted at once (default: twice what the
    cluster fits, at least 16), which bounds the driver's memory on huge suites."""
    ray, started_here = connect(address)
    try:
        slots = check_resources(ray, cpus, gpus)
        window = max_in_flight or max(16, 2 * slots)
        fn_bytes = ray.cloudpickle.dumps(fn)
        fn_ref = ray.put(fn_bytes)
        remote = ray.remote(_instance).options(num_cpus=cpus, num_gpus=gpus, max_retries=0, retry_exceptions=False)
        files = _Files(ray, tasks)
        pending = list(reversed(tasks))
        in_flight = {}
        try:
            while pending or in_flight:
                while pending and len(in_flight) < window:
                    task = pending.pop()
                    view = {k: v for k, v in task.items() if not k.startswith("_") and k not in ("result_path", "onnx",
                                                                                                 "vnnlib")}
                    view.update(grace=grace, mem_limit=mem_limit, name=os.path.basename(task["onnx"]))
                    ref = remote.remote(view, fn_ref, (files.entry(task["onnx"]), files.entry(task["vnnlib"])),
                                        cpus, gpus)
                    in_flight[ref] = (task, time.monotonic())
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                if ready:
                    rest = [r for r in in_flight if r not in ready]
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0] if rest else []
                for ref in ready:
                    task, t_sub = in_flight.pop(ref)
                    out, cause = _outcome(ray, ref)
                    for local, mine in zip((out or {}).pop("paths", ()), (task["onnx"], task["vnnlib"])):
                        out["message"] = str(out.get("message") or "").replace(local, mine)
                    if out is not None and "fault" not in out:
                        sink.finish(task, out)
                    elif record_fault(sink, task, cause or out["fault"], (out or {}).get("time", 0.0)):
                        pending.append(task)  # once more, next
                        continue
                    files.done(task)
        except BaseException:  # Ctrl-C or a driver error: stop the run's tasks on the cluster
            for ref in in_flight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            if in_flight:
                ray.wait(list(in_flight), num_returns=len(in_flight), timeout=10)
            raise
    finally:
        if started_here:
            ray.shutdown()


def _outcome(ray, ref):
    """``(outcome dict, None)`` or ``(None, cause)`` when the task failed in Ray."""
    try:
        return ray.get(ref), None
    except ray.exceptions.RayTaskError as e:  # our task code raised: not a worker fault
        return {"result": "error", "time": 0.0, "message": f"task failed: {_first(e)}"}, None
    except ray.exceptions.RayError as e:  # the worker process or node died, object lost, ...
        return None, f"Ray {type(e).__name__}: {_first(e)}"


def _first(e) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
