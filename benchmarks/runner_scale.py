"""Suite-runner scale benchmark (issue 13): the local engine next to the Ray engine.

``overhead``: thousands of trivial instances (one tiny network, one property file each):
``noop`` runs a task function that returns at once (what the engine itself costs per
instance: scheduling, the object store, the killable child process, the driver's writes);
``tiny`` runs the real verifier on a 2-2-2 network (unsat by IBP). Per engine: instances per
second (wall time of the run, Ray start-up excluded and shown apart) and the driver's peak
RSS. Each configuration runs in a fresh process.

``suite``: a seeded sample of real VNN-COMP instances (default acasxu + rl_benchmarks from
../shared/benchmarks) with a time cap, run by ``--engine local`` (2 workers), by Ray on a
one-node cluster (``ray start --head``, 2 CPUs) and on a two-node cluster (a head and a
second node joined with ``ray start --address``, 1 CPU each), all on this machine. Shows wall
time, verdict counts and how many verdicts agree with the local engine.

    flock /work/bench.lock python benchmarks/runner_scale.py overhead --n 2000
    flock /work/bench.lock python benchmarks/runner_scale.py suite --sample 12 --cap 5
    flock /work/bench.lock python benchmarks/runner_scale.py all --json benchmarks/results/runner_scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BENCH = REPO.parent / "shared" / "benchmarks"
VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


def noop_task(task):
    """A trivial instance: no work at all."""
    return {"result": "unknown", "time": 0.0, "log": [], "message": ""}


def make_trivial_suite(folder: Path, n: int) -> Path:
    """``n`` instances on one tiny network (y = W2 relu(W1 x)), one property file each."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    inits = [numpy_helper.from_array(np.array(a, np.float32), k) for a, k in (
        ([[1, 1], [1, -1]], "W1"), ([0, 0], "b1"), ([[1, -1], [0.5, 0.5]], "W2"), ([0, 0], "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), folder / "tiny.onnx")
    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    (folder / "vnnlib").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        lo = (i % 97) / 1000
        (folder / "vnnlib" / f"p{i}.vnnlib").write_text(
            head + f"(assert (>= X_0 {lo}))\n(assert (<= X_0 1.0))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n"
            "(assert (>= Y_0 2.5))\n")
        rows.append(f"tiny.onnx,vnnlib/p{i}.vnnlib,30\n")
    (folder / "instances.csv").write_text("".join(rows))
    return folder / "instances.csv"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(cfg: dict) -> dict:
    """One configuration, in this (fresh) process: ``{wall_s, init_s, rss_mb, counts, ...}``."""
    from onnxverify.vnncomp import read_instances, run_instances

    groups = [(read_instances(csv), out) for csv, out in cfg["groups"]]
    init_s = 0.0
    if cfg["engine"] == "ray":
        import logging

        import ray

        t = time.monotonic()
        kw = dict(num_cpus=cfg.get("num_cpus", 2), include_dashboard=False) if not cfg.get("address") else {}
        ray.init(address=cfg.get("address"), log_to_driver=False, logging_level=logging.WARNING, **kw)
        init_s = time.monotonic() - t
    from onnxverify.vnncomp import sink

    stamps, finish = [], sink.ResultSink.finish

    def timed_finish(self, task, outcome):  # when each instance reaches the driver's writer
        stamps.append(time.monotonic())
        return finish(self, task, outcome)

    sink.ResultSink.finish = timed_finish
    rss0 = rss_mb()
    t = time.monotonic()
    res = run_instances(groups, timeout_cap=cfg.get("cap"), workers=cfg.get("workers"), progress=False,
                        fn=noop_task if cfg.get("fn") == "noop" else None, engine=cfg["engine"], fresh=True,
                        echo=None)
    wall = time.monotonic() - t
    rows = [r for v in res.values() for r in v]
    nodes = set()
    for _, out in cfg["groups"]:
        with open(os.path.join(out, "log.jsonl")) as f:
            nodes.update(json.loads(line).get("where", {}).get("node") for line in f)
    return {"wall_s": round(wall, 2), "init_s": round(init_s, 2), "n": len(rows), "nodes_used": len(nodes - {None}),
            "per_s": round(len(rows) / wall, 1) if wall else None, "rss0_mb": round(rss0, 1),
            "first_s": round(stamps[0] - t, 2) if stamps else None,
            "steady_per_s": round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 1) if len(stamps) > 1 else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "counts": dict(Counter(r["result"] for r in rows)),
            "verdicts": {f"{r['onnx']}|{r['vnnlib']}": r["result"] for r in rows}}


def run_fresh(cfg: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    if cfg.get("address"):  # the clusters LocalCluster starts use Ray's token authentication
        env.setdefault("RAY_AUTH_MODE", "token")
    p = subprocess.run([sys.executable, __file__, "_one", json.dumps(cfg)], capture_output=True, text=True, env=env,
                       cwd=str(REPO))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        raise RuntimeError(f"configuration {cfg.get('label')} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


class LocalCluster:
    """``ray start --head`` plus ``nodes - 1`` nodes joined to it, all on this machine, each in
    a process group of its own (stopped by signalling those groups only: never ``ray stop``,
    which would stop every Ray on the machine)."""

    def __init__(self, nodes: int, cpus_per_node: int, port: int = 6391):
        self.tmp = tempfile.mkdtemp(prefix="ovrb", dir="/tmp")
        self.env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.procs, self.port = [], port
        self._start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={self.tmp}"],
                    cpus_per_node, "head")
        import re

        found = re.search(r"ray start --address='([^']+)'", open(os.path.join(self.tmp, "head.log")).read())
        self.address = found.group(1) if found else f"127.0.0.1:{port}"
        for i in range(1, nodes):
            self._start([f"--address={self.address}"], cpus_per_node, f"node{i}")
        self._wait_nodes(nodes)

    def _start(self, args, cpus, name):
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(["ray", "start", "--block", f"--num-cpus={cpus}", "--disable-usage-stats", *args],
                             stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, cwd=str(REPO))
        self.procs.append(p)
        t = time.monotonic()
        while time.monotonic() - t < 120:
            if "block forever" in open(log.name).read():
                return
            if p.poll() is not None:
                raise RuntimeError(f"ray start ({name}) failed: see {log.name}")
            time.sleep(0.5)
        raise RuntimeError(f"ray start ({name}) did not come up in 120 s")

    def _wait_nodes(self, n):
        code = (f"import ray; ray.init(address='{self.address}'); "
                "print(sum(1 for x in ray.nodes() if x['Alive']))")
        t = time.monotonic()
        while time.monotonic() - t < 60:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env)
            if out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {n} nodes")

    def stop(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in reversed(self.procs):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(5 if sig == signal.SIGTERM else 1)
        for p in self.procs:
            p.wait()


def overhead(args) -> list:
    tmp = Path(tempfile.mkdtemp(prefix="ov_scale"))
    csv = make_trivial_suite(tmp / "suite", args.n)
    csv_small = make_trivial_suite(tmp / "small", args.n_tiny)
    out = []
    for fn, path, n in (("noop", csv, args.n), ("tiny", csv_small, args.n_tiny)):
        for engine in ("local", "ray"):
            cfg = {"label": f"{fn}/{engine}", "engine": engine, "fn": fn, "workers": 2 if engine == "local" else None,
                   "num_cpus": 2, "groups": [(str(path), str(tmp / f"out_{fn}_{engine}"))]}
            r = run_fresh(cfg)
            r.pop("verdicts")
            out.append({"what": fn, "engine": engine, **r})
            print(f"  {cfg['label']}: {r['n']} in {r['wall_s']} s ({r['per_s']}/s), peak RSS {r['peak_rss_mb']} MB",
                  flush=True)
    return out


def suite(args) -> list:
    bench = Path(args.bench_dir)
    from onnxverify.vnncomp import read_instances

    tmp = Path(tempfile.mkdtemp(prefix="ov_suite"))
    groups = []
    for name in args.benchmarks.split(","):
        insts = read_instances(bench / name / "instances.csv", benchmark=name)
        pick = sorted(random.Random(args.seed).sample(range(len(insts)), min(args.sample, len(insts))))
        csv = tmp / f"{name}.csv"  # the same rows, paths made absolute: one csv per benchmark
        csv.write_text("".join(f"{insts[i].onnx_path},{insts[i].vnnlib_path},{insts[i].timeout}\n" for i in pick))
        groups.append((name, csv))
    configs = [("local (2 workers)", "local", None, 0), ("ray, 1 node x 2 CPUs", "ray", (1, 2), 0),
               ("ray, 2 nodes x 1 CPU", "ray", (2, 1), 0)]
    out, base = [], None
    for label, engine, shape, _ in configs:
        cluster = LocalCluster(*shape) if shape else None
        try:
            cfg = {"label": label, "engine": engine, "cap": args.cap, "workers": 2 if engine == "local" else None,
                   "address": cluster.address if cluster else None,
                   "groups": [(str(c), str(tmp / f"out_{engine}_{shape}" / n)) for n, c in groups]}
            r = run_fresh(cfg)
        finally:
            if cluster:
                cluster.stop()
        verdicts = r.pop("verdicts")
        base = base or verdicts
        r["agree_with_local"] = sum(verdicts.get(k) == v for k, v in base.items())
        out.append({"config": label, **r})
        print(f"  {label}: {r['n']} in {r['wall_s']} s, {r['counts']}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["overhead", "suite", "all", "_one"])
    ap.add_argument("cfg", nargs="?")
    ap.add_argument("--n", type=int, default=2000, help="trivial instances (noop)")
    ap.add_argument("--n-tiny", type=int, default=200, help="tiny real instances")
    ap.add_argument("--bench-dir", default=str(DEFAULT_BENCH))
    ap.add_argument("--benchmarks", default="acasxu,rl_benchmarks")
    ap.add_argument("--sample", type=int, default=12, help="instances per benchmark (seeded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap", type=float, default=5.0, help="per-instance time cap (s)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.what == "_one":
        print(json.dumps(measure(json.loads(args.cfg))))
        return 0
    from onnxverify.report import format_table

    result = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}}
    if args.what in ("overhead", "all"):
        rows = overhead(args)
        result["overhead"] = rows
        print(format_table(["instances", "engine", "n", "ray init s", "first row s", "wall_s", "inst/s",
                            "inst/s after first", "driver RSS MB (start/peak)"],
                           [[r["what"], r["engine"], r["n"], r["init_s"] or "", r["first_s"], r["wall_s"], r["per_s"],
                             r["steady_per_s"], f"{r['rss0_mb']:.0f}/{r['peak_rss_mb']:.0f}"] for r in rows]))
    if args.what in ("suite", "all"):
        rows = suite(args)
        result["suite"] = {"benchmarks": args.benchmarks, "sample": args.sample, "seed": args.seed, "cap_s": args.cap,
                           "rows": rows}
        print(format_table(["engine", "n", "nodes used", "wall_s", *VERDICTS, "agree w/ local"],
                           [[r["config"], r["n"], r["nodes_used"] or "", r["wall_s"],
                             *[r["counts"].get(v, 0) for v in VERDICTS], r["agree_with_local"]] for r in rows]))
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
