"""A crash-proof parallel runner for VNN-COMP suites on local worker processes.

:func:`run_instances` keeps ``workers`` long-lived worker processes (spawned, not forked),
hands each one instance at a time, kills a worker that overruns its instance's timeout by
more than a small grace (the row says ``timeout``) or dies (``error``), starts a fresh one,
and appends each finished row to ``results.csv`` at once. Finished rows are skipped on a
re-run (resume).
"""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import time
from collections import Counter, OrderedDict

import numpy as np

from .results import VERDICTS, write_result

__all__ = ["RESULT_FIELDS", "run_instances", "verify_task", "default_memory_limit"]

RESULT_FIELDS = ["onnx", "vnnlib", "result", "time"]


def verify_task(task: dict) -> dict:
    """Run one instance (in a worker): writes the result file, returns the row + log."""
    from ..verify.cascade import verify

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
    write_result(task["result_path"], verdict, ce)
    return {"result": verdict, "time": elapsed, "log": log, "message": msg}


def _worker_main(conn, fn, mem_limit):
    if mem_limit:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (int(mem_limit), int(mem_limit)))
        except (ImportError, ValueError, OSError):
            pass
    try:  # import the heavy parts before the first clock starts
        import onnxruntime  # noqa: F401

        from .. import verify  # noqa: F401
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
            out = {"result": "error", "time": 0.0, "log": [], "message": f"{type(e).__name__}: {e}"}
        conn.send(out)


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class _Worker:
    def __init__(self, ctx, fn, mem_limit, threads=None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, mem_limit), daemon=True)
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        if threads:  # BLAS reads these at import time in the child; the user's own setting wins
            for k in _THREAD_VARS:
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
        self.conn.send(task)

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


# ----------------------------------------------------------------------------- runner
def _read_done(results_csv) -> dict:
    done = {}
    if os.path.exists(results_csv):
        with open(results_csv, newline="") as f:
            for r in csv.DictReader(f):
                if r.get("result") in VERDICTS:
                    done[(r["onnx"], r["vnnlib"])] = r
    return done


def default_memory_limit(workers: int):
    """Address-space limit per worker: 80% of RAM shared among the workers (>= 2 GB)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return max(2 * 2**30, int(0.8 * total / max(workers, 1)))


def run_instances(groups, timeout_cap: float | None = None, workers: int = 1, methods=None, grace: float = 2.0,
                  progress: bool = True, fn=None, mem_limit="auto", seed: int = 0) -> dict:
    """Run instances in worker processes.

    ``groups``: list of ``(instances, out_dir)``; each ``out_dir`` gets ``results.csv``
    (onnx, vnnlib, result, time), ``log.jsonl`` (one line per instance with its steps) and
    ``results/`` (one result file per instance). Returns ``{out_dir: [row dicts]}`` in
    instance order (previous rows included). ``fn`` (a picklable top-level function of a
    task dict) replaces :func:`verify_task` (for tests).
    """
    fn = fn or verify_task
    workers = max(1, int(workers))
    if mem_limit == "auto":
        mem_limit = default_memory_limit(workers)
    max_memory = int(0.6 * mem_limit) if mem_limit else None
    queue, rows_by_dir, files = [], {}, {}
    for instances, out_dir in groups:
        os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
        results_csv = os.path.join(out_dir, "results.csv")
        done = _read_done(results_csv)
        rows_by_dir[out_dir] = OrderedDict((inst.key, done.get(inst.key)) for inst in instances)
        new_file = not os.path.exists(results_csv) or os.path.getsize(results_csv) == 0
        fcsv = open(results_csv, "a", newline="")
        writer = csv.DictWriter(fcsv, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        if new_file:
            writer.writeheader()
            fcsv.flush()
        flog = open(os.path.join(out_dir, "log.jsonl"), "a")
        files[out_dir] = (fcsv, writer, flog)
        for inst in instances:
            if inst.key in done:
                continue
            t = inst.timeout if timeout_cap is None else min(inst.timeout, timeout_cap)
            queue.append({"onnx": inst.onnx_path, "vnnlib": inst.vnnlib_path, "timeout": float(t),
                          "result_path": os.path.join(out_dir, "results", inst.result_name()), "methods": methods,
                          "seed": seed, "max_memory": max_memory, "_key": inst.key, "_dir": out_dir,
                          "_bench": inst.benchmark})
    bar = None
    if progress and queue:
        from tqdm import tqdm

        bar = tqdm(total=len(queue), unit="inst", dynamic_ncols=True, smoothing=0.05)
    counts = Counter()

    def finish(task, result, elapsed, log=(), message=""):
        row = {"onnx": task["_key"][0], "vnnlib": task["_key"][1], "result": result, "time": f"{elapsed:.3f}"}
        fcsv, writer, flog = files[task["_dir"]]
        writer.writerow(row)
        fcsv.flush()
        flog.write(json.dumps({**row, "benchmark": task["_bench"], "message": message, "log": list(log)},
                              default=_json_default) + "\n")
        flog.flush()
        rows_by_dir[task["_dir"]][task["_key"]] = row
        counts[result] += 1
        if bar is not None:
            bar.set_postfix_str(" ".join(f"{k}={counts[k]}" for k in VERDICTS if counts[k]), refresh=False)
            bar.update(1)

    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = []
    boot_failures = 0
    try:
        pending = list(reversed(queue))
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
                            write_result(task["result_path"], "error")
                            finish(task, "error", 0.0, message="worker process failed to start")
                        pending.clear()
            busy = [w for w in pool if w.task is not None]
            for w in busy:
                task = w.task
                if w.conn in ready or w.conn.poll():
                    try:
                        out = w.conn.recv()
                    except (EOFError, OSError):
                        out = None
                    if out is not None:
                        w.task = None
                        finish(task, out["result"], out.get("time", now - w.started), out.get("log", ()),
                               out.get("message", ""))
                        continue
                if not w.proc.is_alive() or (w.proc.sentinel in ready and not w.conn.poll()):
                    code = w.proc.exitcode
                    w.kill()
                    pool.remove(w)
                    write_result(task["result_path"], "error")
                    finish(task, "error", now - w.started, message=f"worker died (exit code {code})")
                elif now - w.started > task["timeout"] + grace:
                    w.kill()
                    pool.remove(w)
                    write_result(task["result_path"], "timeout")
                    finish(task, "timeout", now - w.started, message="killed at the time limit")
    finally:
        for w in pool:
            if w.task is not None:
                w.kill()
            else:
                w.stop()
        if bar is not None:
            bar.close()
        for fcsv, _, flog in files.values():
            fcsv.close()
            flog.close()
    return {d: [r for r in rows.values() if r is not None] for d, rows in rows_by_dir.items()}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


