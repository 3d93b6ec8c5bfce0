"""The worker side of a suite run: one verification as a task, and the limits its process gets.

Every engine (local worker processes, Ray tasks) runs :func:`verify_task` in a process of its
own; the engines import this module, never each other or the runner.
"""
from __future__ import annotations

import os
import time

from .results import write_result

__all__ = ["THREAD_VARS", "default_memory_limit", "set_memory_limit", "verify_task", "spoils_process"]

#: thread-pool sizes BLAS/OpenMP read at import time in a worker
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def verify_task(task: dict) -> dict:
    """Run one instance (in a worker): ``{"result", "time", "log", "message",
    "counterexample"}`` (``(x_flat, y_flat)`` for sat, else None). With ``result_path`` in
    the task it also writes the result file (the runner's driver writes it otherwise)."""
    from ..verify import verify

    t0 = time.monotonic()
    try:
        res = verify(task["onnx"], task["vnnlib"], timeout=task["timeout"], methods=task.get("methods"),
                     seed=task.get("seed", 0), max_memory=task.get("max_memory"))
        verdict, ce, log, msg = res.verdict, res.counterexample, res.log, res.message
    except MemoryError as e:
        verdict, ce, log, msg = "error", None, [], f"out of memory: {e}"
    except Exception as e:
        verdict, ce, log, msg = "error", None, [], f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    elapsed = time.monotonic() - t0
    if task.get("result_path"):
        write_result(task["result_path"], verdict, ce)
    return {"result": verdict, "time": elapsed, "log": log, "message": msg, "counterexample": ce}


def default_memory_limit(workers: int):
    """Memory limit per worker (:func:`set_memory_limit`): 80% of RAM shared among the workers (>= 2 GB)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return max(2 * 2**30, int(0.8 * total / max(workers, 1)))


def set_memory_limit(mem_limit) -> None:
    """Cap the memory this process can allocate at ``mem_limit`` bytes (no-op where
    unsupported): its data (heap and private anonymous mappings, ``RLIMIT_DATA``, Linux >=
    4.7), not its address space, which mapped libraries inflate without using memory (the
    CUDA build of torch maps ~3 GB: with 2 workers on 24 GB, an address-space cap of 9 GB
    left big CIFAR instances ~6 GB and their allocations failed); ``RLIMIT_AS`` where there
    is no ``RLIMIT_DATA``."""
    if mem_limit:
        try:
            import resource

            kind = getattr(resource, "RLIMIT_DATA", None) or resource.RLIMIT_AS
            resource.setrlimit(kind, (int(mem_limit), int(mem_limit)))
        except (ImportError, ValueError, OSError):
            pass


#: messages of failures after which a process's libraries may be left broken (an
#: allocation failing inside torch leaves its oneDNN kernels unable to create primitives)
_SPOILING = ("MemoryError", "out of memory", "can't allocate memory", "Cannot allocate memory",
             "could not create a primitive")


def spoils_process(out: dict) -> bool:
    """Whether the task result ``out`` is an error after which the worker should be replaced
    by a fresh process rather than run the next instance."""
    return out.get("result") == "error" and any(s in (out.get("message") or "") for s in _SPOILING)
