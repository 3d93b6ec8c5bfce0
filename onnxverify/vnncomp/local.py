"""The local engine: long-lived worker processes on this machine.

:func:`run_local` keeps ``workers`` worker processes (spawned, not forked, each with an
memory limit), hands each one instance at a time, kills a worker that overruns its
instance's timeout by more than ``grace`` seconds (the row says ``timeout``), and gives an
instance whose worker dies one retry on a fresh worker before its ``error`` row, and
replaces a worker after an error that may leave its process broken (out of memory:
:func:`~.task.spoils_process`). Workers
return verdicts; the driver (:class:`~onnxverify.vnncomp.sink.ResultSink`) writes them.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import time

from .sink import ResultSink, record_fault
from .task import THREAD_VARS, set_memory_limit, spoils_process, verify_task

__all__ = ["run_local"]

def _worker_main(conn, fn, mem_limit, preload):
    set_memory_limit(mem_limit)
    if preload:
        try:  # import the verifier before the first clock starts
            from . import preload  # noqa: F401
        except Exception:
            pass
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            out = fn(task)
        except BaseException as e:  # the task function itself failed: report, keep serving
            out = {"result": "error", "time": 0.0, "message": f"{type(e).__name__}: {e}"}
        if spoils_process(out):  # e.g. out of memory: report, then make way for a fresh worker
            conn.send({**out, "retire": True})
            return
        conn.send(out)


class _Worker:
    def __init__(self, ctx, fn, mem_limit, threads=None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, mem_limit, fn is verify_task), daemon=True)
        saved = {k: os.environ.get(k) for k in THREAD_VARS}
        if threads:  # BLAS reads these at import time in the child; the user's own setting wins
            for k in THREAD_VARS:
                os.environ.setdefault(k, str(threads))
        try:
            self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.task = None
        self.ready = False
        self.started = time.monotonic()  # boot start until ready, then the task's start

    def submit(self, task):
        self.task = task
        self.started = time.monotonic()
        self.conn.send(_worker_view(task))

    def kill(self):
        try:
            self.proc.kill()
        except Exception:
            pass
        self.proc.join(timeout=5)
        try:
            self.conn.close()
        except Exception:
            pass

    def stop(self):
        try:
            self.conn.send(None)
        except Exception:
            pass
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.kill()


def _worker_view(task: dict) -> dict:
    """What a worker gets: the task without the driver's bookkeeping (keys starting with _)."""
    return {k: v for k, v in task.items() if not k.startswith("_") and k != "result_path"}


def run_local(tasks, sink: ResultSink, fn, workers: int = 1, grace: float = 2.0, mem_limit=None) -> None:
    """Run ``tasks`` (driver task dicts, see :func:`~onnxverify.vnncomp.runner.run_instances`)
    on ``workers`` local processes; every finished instance goes to ``sink.finish``."""
    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = []
    boot_failures = 0
    pending = list(reversed(tasks))
    try:
        while pending or any(w.task is not None for w in pool):
            while pending and len(pool) < min(workers, len(pending) + sum(w.task is not None for w in pool)):
                pool.append(_Worker(ctx, fn, mem_limit, threads))
            for w in pool:
                if pending and w.ready and w.task is None:
                    w.submit(pending.pop())
            ready = mp.connection.wait([w.conn for w in pool] + [w.proc.sentinel for w in pool], timeout=0.2)
            now = time.monotonic()
            for w in [w for w in pool if not w.ready]:  # booting workers
                if w.conn in ready or w.conn.poll():
                    try:
                        w.ready = w.conn.recv() == "ready"
                        boot_failures = 0
                        continue
                    except (EOFError, OSError):
                        pass
                if not w.proc.is_alive() or w.proc.sentinel in ready or now - w.started > 300:
                    w.kill()
                    pool.remove(w)
                    boot_failures += 1
                    if boot_failures >= 3:  # workers cannot start: fail the rest, don't spin
                        for task in reversed(pending):
                            sink.finish(task, {"result": "error", "time": 0.0,
                                               "message": "worker process failed to start"})
                        pending.clear()
            for w in [w for w in pool if w.task is not None]:
                task = w.task
                if w.conn in ready or w.conn.poll():
                    try:
                        out = w.conn.recv()
                    except (EOFError, OSError):
                        out = None
                    if out is not None:
                        w.task = None
                        retire = out.pop("retire", False)
                        sink.finish(task, {"time": now - w.started, **out,
                                           "where": {"engine": "local", "pid": w.proc.pid}})
                        if retire:  # its process may be broken: the next instance gets a fresh one
                            w.stop()
                            pool.remove(w)
                        continue
                if not w.proc.is_alive() or (w.proc.sentinel in ready and not w.conn.poll()):
                    code = w.proc.exitcode
                    w.kill()
                    pool.remove(w)
                    if record_fault(sink, task, f"worker process died (exit code {code})", now - w.started):
                        pending.append(task)  # run it again next
                elif now - w.started > task["timeout"] + grace:
                    w.kill()
                    pool.remove(w)
                    sink.finish(task, {"result": "timeout", "time": now - w.started,
                                       "message": "killed at the time limit", "where": {"engine": "local"}})
    finally:
        for w in pool:
            if w.task is not None:
                w.kill()
            else:
                w.stop()
