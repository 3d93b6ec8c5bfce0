"""VNN-COMP benchmark run: our verdicts next to the expected ones and alpha-beta-CROWN's.

Runs every benchmark of the shared folder (or the ones named) with a per-instance time cap
through the parallel runner, re-checks every ``sat`` counterexample in onnxruntime, and
prints per benchmark: our counts, the expected counts (ground_truth.csv), alpha-beta-CROWN's
(at its own competition timeout, and within our cap), and the number of UNSOUND answers
(ours ``unsat`` where ``expected`` is ``sat``, or a ``sat`` whose counterexample fails the
onnxruntime re-check) — which must be 0. Writes ``summary.json`` and ``summary.csv``.

    python benchmarks/vnncomp.py                         # everything, 30 s cap, 2 workers
    python benchmarks/vnncomp.py acasxu mnist_fc --cap 10 --sample 20
    python benchmarks/vnncomp.py --fresh                 # ignore finished rows of a previous run
    python benchmarks/vnncomp.py acasxu --engine ray --address auto --cpus-per-instance 1

An interrupted run resumes where it stopped (finished rows made with the same cap and
methods are kept; ``--redo unknown,timeout`` redoes chosen verdicts).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from _summary import write_summary  # benchmarks/ (the script's folder) is on sys.path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BENCH = REPO.parent / "shared" / "benchmarks"
VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


def sample_evenly(items, n, expected=None):
    """``n`` items spread over the list; with ``expected`` (key -> verdict) the sample keeps
    each expected verdict in proportion, at least one of each present."""
    if n is None or n >= len(items):
        return list(items)
    if expected is None:
        idx = np.linspace(0, len(items) - 1, n).round().astype(int)
        return [items[i] for i in sorted(set(idx))]
    groups = {}
    for it in items:
        groups.setdefault(expected.get(it.key, "unknown"), []).append(it)
    quota = {k: max(1, round(n * len(v) / len(items))) for k, v in groups.items()}
    out = []
    for k, v in groups.items():
        out += sample_evenly(v, min(quota[k], len(v)))
    return sorted(out, key=lambda it: it.index)[: max(n, len(groups))]


def load_ground_truth(bench_dir):
    gt = {}
    path = Path(bench_dir) / "ground_truth.csv"
    if path.exists():
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                gt[(r["benchmark"], os.path.normpath(r["onnx"]), os.path.normpath(r["vnnlib"]))] = r
    return gt


def recheck(inst, result_path, cache):
    """Replay a sat result file in onnxruntime: True / False (fails) / None (no file)."""
    from onnxverify.onnx.reference import OrtModel
    from onnxverify.vnncomp import read_result, replay_counterexample
    from onnxverify.specs.vnnlib import parse_vnnlib

    if not os.path.exists(result_path):
        return None
    verdict, x, _ = read_result(result_path)
    if verdict != "sat":
        return None
    if x is None:
        return False
    if inst.onnx_path not in cache:
        cache.clear()
        cache[inst.onnx_path] = OrtModel(inst.onnx_path)
    ok, _ = replay_counterexample(inst.onnx_path, parse_vnnlib(inst.vnnlib_path), x, cache[inst.onnx_path])
    return ok


def judge(name, inst, row, gt, result_dir, cache, cap):
    """One finished instance (``row``: its results.csv row) of benchmark ``name`` against
    ground_truth.csv (``gt``), a sat replayed in onnxruntime: ``result``, ``time``,
    ``expected``, ``abcrown``, ``abcrown_time``, ``abcrown_within_cap`` (it decided within
    ``cap`` s), ``replay_ok`` (True / False / None: not sat or no result file) and
    ``unsound`` (unsat where sat is expected, or a sat that does not replay)."""
    g = gt.get((name, os.path.normpath(inst.onnx), os.path.normpath(inst.vnnlib)), {})
    verdict, expected = row["result"], g.get("expected", "")
    ab, ab_t = g.get("abcrown_result", ""), g.get("abcrown_time", "")
    ok = recheck(inst, os.path.join(result_dir, "results", inst.result_name()), cache) if verdict == "sat" else None
    return {"result": verdict, "time": row["time"], "expected": expected, "abcrown": ab, "abcrown_time": ab_t,
            "abcrown_within_cap": ab in ("sat", "unsat") and bool(ab_t) and float(ab_t) <= cap, "replay_ok": ok,
            "unsound": (verdict == "unsat" and expected == "sat") or ok is False}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benchmarks", nargs="*", help="benchmark folder names (default: all)")
    ap.add_argument("--bench-dir", default=str(DEFAULT_BENCH))
    ap.add_argument("--cap", type=float, default=30.0, help="per-instance time cap in seconds")
    ap.add_argument("--workers", type=int, default=None, help="local: worker processes (default 2); "
                    "ray: most tasks in flight")
    ap.add_argument("--engine", choices=["local", "ray"], default="local")
    ap.add_argument("--address", default=None, help="ray: cluster address (auto, HOST:PORT)")
    ap.add_argument("--cpus-per-instance", type=float, default=1.0)
    ap.add_argument("--gpus-per-instance", type=float, default=0.0)
    ap.add_argument("--redo", default="", help="verdicts to redo, e.g. unknown,timeout,error")
    ap.add_argument("--sample", type=int, default=None, help="instances per benchmark (stratified by expected)")
    ap.add_argument("--out", default=str(REPO / "out" / "vnncomp"), help="output folder (default: out/vnncomp, git-ignored)")
    ap.add_argument("--methods", default=None, help="bound cascade (default: onnxverify's)")
    ap.add_argument("--fresh", action="store_true", help="delete previous results first")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from onnxverify.report import format_table
    from onnxverify.vnncomp import read_instances, run_instances

    bench_dir = Path(args.bench_dir)
    if not bench_dir.is_dir():
        sys.exit(f"benchmark folder not found: {bench_dir}")
    names = args.benchmarks or sorted(p.name for p in bench_dir.iterdir() if (p / "instances.csv").exists())
    gt = load_ground_truth(bench_dir)
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    groups = []
    for name in names:
        insts = read_instances(bench_dir / name / "instances.csv", benchmark=name)
        exp = {it.key: gt.get((name, os.path.normpath(it.onnx), os.path.normpath(it.vnnlib)), {}).get("expected")
               for it in insts}
        groups.append((name, sample_evenly(insts, args.sample, exp), str(out / name)))
    t0 = time.monotonic()
    if args.workers is None and args.engine == "local":
        args.workers = 2
    results = run_instances([(insts, d) for _, insts, d in groups], timeout_cap=args.cap, workers=args.workers,
                            methods=args.methods, progress=not args.no_progress, engine=args.engine,
                            address=args.address, cpus_per_instance=args.cpus_per_instance,
                            gpus_per_instance=args.gpus_per_instance,
                            redo=[v.strip() for v in args.redo.split(",") if v.strip()])
    wall = time.monotonic() - t0

    table, summary, rows_out = [], {}, []
    cache = {}
    for name, insts, d in groups:
        ours = {(r["onnx"], r["vnnlib"]): r for r in results[d]}
        c, e, a, a_cap = Counter(), Counter(), Counter(), Counter()
        unsound, disagree, replay_fail, t_sum = 0, 0, 0, 0.0
        for it in insts:
            r = ours.get(it.key)
            if r is None:
                continue
            j = judge(name, it, r, gt, d, cache, args.cap)
            verdict, expected, ab, ok = j["result"], j["expected"], j["abcrown"], j["replay_ok"]
            c[verdict] += 1
            e[expected or "?"] += 1
            a[ab or "?"] += 1
            if j["abcrown_within_cap"]:
                a_cap[ab] += 1
            t_sum += float(r["time"])
            if ok is False:
                replay_fail += 1
            elif verdict == "sat" and expected == "unsat":
                disagree += 1  # a replayed counterexample against the ground truth: report it
            unsound += j["unsound"]
            rows_out.append({"benchmark": name, "onnx": it.onnx, "vnnlib": it.vnnlib, "result": verdict,
                             "time": r["time"], "expected": expected, "abcrown": ab, "abcrown_time": j["abcrown_time"],
                             "replay_ok": "" if ok is None else ok})
        n = sum(c.values())
        solved = c["sat"] + c["unsat"]
        summary[name] = {"instances": n, "ours": dict(c), "expected": dict(e), "abcrown": dict(a),
                         "abcrown_within_cap": dict(a_cap), "solved": solved,
                         "abcrown_solved": a["sat"] + a["unsat"], "unsound": unsound,
                         "sat_replay_failures": replay_fail, "sat_vs_expected_unsat": disagree,
                         "time_s": round(t_sum, 1)}
        table.append([name, n, c["sat"], c["unsat"], c["unknown"], c["timeout"], c["error"],
                      f"{e['sat']}/{e['unsat']}/{e['unknown']}", f"{a['sat']}/{a['unsat']}",
                      f"{a_cap['sat']}/{a_cap['unsat']}", f"{solved}", f"{a['sat'] + a['unsat']}", unsound,
                      f"{t_sum:.0f}"])
    tot = {k: sum(s[k] for s in summary.values()) for k in ("instances", "solved", "abcrown_solved", "unsound", "time_s")}
    headers = ["benchmark", "n", "sat", "unsat", "unkn", "t/o", "err", "expected s/u/?", "abcrown s/u",
               f"abcrown<={args.cap:g}s s/u", "ours solved", "abcrown solved", "UNSOUND", "time_s"]
    table.append(["all", tot["instances"], *[sum(s["ours"].get(v, 0) for s in summary.values()) for v in VERDICTS],
                  "", "", "", tot["solved"], tot["abcrown_solved"], tot["unsound"], f"{tot['time_s']:.0f}"])
    print(format_table(headers, table))
    where = f"{args.workers} worker(s)" if args.engine == "local" else f"ray ({args.address or 'default address'})"
    print(f"cap {args.cap:g} s, {where}, wall {wall:.0f} s; results in {out}")
    write_summary(out, {"cap_s": args.cap, "workers": args.workers, "engine": args.engine, "sample": args.sample,
                        "wall_s": round(wall, 1)}, summary, tot, rows_out)
    return 1 if tot["unsound"] else 0


if __name__ == "__main__":
    sys.exit(main())
