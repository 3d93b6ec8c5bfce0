"""VNN-COMP plumbing: result files, ``instances.csv``, and a crash-proof parallel runner.

Result file (the competition's format): first line ``sat``, ``unsat``, ``unknown``,
``timeout`` or ``error``; for ``sat`` the counterexample follows as one s-expression::

    sat
    ((X_0 0.10000000149011612)
     (X_1 -0.5)
     (Y_0 3.25))

with X flattened in C order and Y the onnxruntime outputs at X (full float repr).

The runner (:func:`run_instances`) keeps ``workers`` long-lived worker processes (spawned,
not forked), hands each one instance at a time, kills a worker that overruns its instance's
timeout by more than a small grace (the row says ``timeout``) or dies (``error``), starts a
fresh one, and appends each finished row to ``results.csv`` at once. Finished rows are
skipped on a re-run (resume).
"""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["format_result", "write_result", "read_result", "Instance", "read_instances", "run_instances",
           "summarize", "RESULT_FIELDS", "replay_counterexample"]

RESULT_FIELDS = ["onnx", "vnnlib", "result", "time"]
VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")
_PAIR_RE = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


# ----------------------------------------------------------------------------- result files
def format_result(verdict: str, counterexample=None) -> str:
    """The result file text. ``counterexample``: ``(x_flat, y_flat)`` for ``sat``."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}")
    if verdict != "sat" or counterexample is None:
        return verdict + "\n"
    x, y = (np.asarray(a, dtype=np.float64).ravel() for a in counterexample)
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


def write_result(path, verdict: str, counterexample=None) -> None:
    """Write the result file atomically (a reader never sees half a file)."""
    path = os.fspath(path)
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(format_result(verdict, counterexample))
    os.replace(tmp, path)


def read_result(path):
    """``(verdict, x (n_in,) or None, y (n_out,) or None)`` from a result file.

    Accepts the competition's spellings ``holds``/``violated`` for unsat/sat.
    """
    with open(path) as f:
        text = f.read()
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty result file")
    verdict = lines[0].strip().lower()
    verdict = {"holds": "unsat", "violated": "sat"}.get(verdict, verdict)
    if verdict not in VERDICTS:
        raise ValueError(f"{path}: unknown verdict {lines[0].strip()!r}")
    if verdict != "sat":
        return verdict, None, None
    xs, ys = {}, {}
    for kind, idx, val in _PAIR_RE.findall("\n".join(lines[1:])):
        (xs if kind == "X" else ys)[int(idx)] = float(val)
    if not xs:
        return verdict, None, None

    def dense(d, what):
        if sorted(d) != list(range(len(d))):
            raise ValueError(f"{path}: {what} indices are not 0..{len(d) - 1}")
        return np.array([d[i] for i in range(len(d))])

    return verdict, dense(xs, "X"), dense(ys, "Y") if ys else None


def replay_counterexample(onnx_path, vnnlib_path_or_prop, x_flat, ort=None):
    """Run onnxruntime at ``x_flat`` and check the property: ``(ok, y_flat)`` (see
    :func:`onnxverify.attack.confirms` for the one float32 allowance on the input box)."""
    from .attack import confirms
    from .reference import OrtModel
    from .vnnlib import Property, parse_vnnlib

    ort = ort or OrtModel(onnx_path)
    prop = vnnlib_path_or_prop if isinstance(vnnlib_path_or_prop, Property) else parse_vnnlib(vnnlib_path_or_prop)
    shape = ort.session.get_inputs()[0].shape[1:]
    shape = tuple(shape) if all(isinstance(s, int) for s in shape) else (len(x_flat),)
    y = np.asarray(ort(np.asarray(x_flat, dtype=np.float32).reshape((1,) + shape))).reshape(-1).astype(np.float64)
    return confirms(prop, np.asarray(x_flat, dtype=np.float64), y), y


# ----------------------------------------------------------------------------- instances
@dataclass
class Instance:
    """One row of an ``instances.csv``: paths as written (relative to ``root``), timeout in s."""

    onnx: str
    vnnlib: str
    timeout: float
    root: str = "."
    benchmark: str = ""
    index: int = 0

    @property
    def onnx_path(self):
        return os.path.normpath(os.path.join(self.root, self.onnx))

    @property
    def vnnlib_path(self):
        return os.path.normpath(os.path.join(self.root, self.vnnlib))

    @property
    def key(self):
        return self.onnx, self.vnnlib

    def result_name(self) -> str:
        def stem(p):
            p = re.sub(r"\.gz$", "", p)
            p = os.path.splitext(p)[0]
            return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", p.replace(os.sep, "/").strip("./").replace("/", "-"))

        return f"{self.index:04d}_{stem(self.onnx)}__{stem(self.vnnlib)}.txt"


def read_instances(csv_path, benchmark: str | None = None) -> list:
    """Instances of a competition ``instances.csv`` (``onnx,vnnlib,timeout``, no header;
    a header line is tolerated). ``benchmark`` defaults to the csv's folder name."""
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise InputError(f"instances file not found: {csv_path}")
    root = os.path.dirname(os.path.abspath(csv_path))
    bench = benchmark or os.path.basename(root)
    out, seen = [], set()
    with open(csv_path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if len(row) < 3:
                raise InputError(f"{csv_path}:{lineno}: expected onnx,vnnlib,timeout, got {','.join(row)!r}")
            try:
                timeout = float(row[2])
            except ValueError:
                if lineno == 1:  # a header
                    continue
                raise InputError(f"{csv_path}:{lineno}: timeout {row[2]!r} is not a number") from None
            if (row[0], row[1]) in seen:
                continue
            seen.add((row[0], row[1]))
            out.append(Instance(row[0], row[1], timeout, root, bench, len(out)))
    if not out:
        raise InputError(f"{csv_path}: no instances")
    return out


# ----------------------------------------------------------------------------- worker side
def verify_task(task: dict) -> dict:
    """Run one instance (in a worker): writes the result file, returns the row + log."""
    from .verify import verify

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

        from . import verify  # noqa: F401
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


def summarize(rows) -> dict:
    """Counts per verdict (all of :data:`VERDICTS`, zeros included) plus ``total`` and ``time``."""
    c = Counter(r["result"] for r in rows)
    out = {v: c.get(v, 0) for v in VERDICTS}
    out["total"] = len(rows)
    out["time"] = round(sum(float(r["time"]) for r in rows if r.get("time") not in (None, "")), 1)
    return out


def summary_table(by_benchmark: dict) -> str:
    """A text table: one row per benchmark (``{name: rows}``), counts per verdict."""
    from .cli import format_table

    headers = ["benchmark", *VERDICTS, "total", "time_s"]
    table, tot = [], Counter()
    for name, rows in by_benchmark.items():
        s = summarize(rows)
        table.append([name, *[s[v] for v in VERDICTS], s["total"], f"{s['time']:.0f}"])
        for k in (*VERDICTS, "total", "time"):
            tot[k] += s[k]
    if len(by_benchmark) > 1:
        table.append(["all", *[tot[v] for v in VERDICTS], tot["total"], f"{tot['time']:.0f}"])
    return format_table(headers, table)
