"""Complete verification on a fixed, seeded sample of the shared benchmarks, next to
alpha-beta-CROWN's answers on the same instances.

Per benchmark family: our sat/unsat/unknown/timeout/error counts (the full default cascade:
bounds, attacks, input bisection, alpha-CROWN, MILP, beta-CROWN branch and bound), the
expected verdicts and alpha-beta-CROWN's (ground_truth.csv: at its own competition timeout,
and within our cap), UNSOUND answers (ours unsat where sat is expected, or a sat whose
counterexample fails the onnxruntime replay: must be 0), which step decided, the alpha-CROWN
vs CROWN improvement of the worst margin (from the verify logs), branch-and-bound
subdomains per second, and where the time went (seconds per step, summed).

    flock /work/bench.lock python benchmarks/complete.py --per-family 20 --cap 60 --workers 1
    python benchmarks/complete.py mnist_fc oval21 --per-family 3      # a quick look
    python benchmarks/complete.py --families acasxu,reach_prob_density --per-family 3

The sample is ``--per-family`` instances drawn without replacement with ``--seed`` (the
same instances on every run); the time limit is ``min(cap, the instance's own timeout)``.
Writes ``OUT/summary.json``, ``OUT/rows.csv`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's onnxverify
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _summary import write_summary  # noqa: E402
from vnncomp import DEFAULT_BENCH, VERDICTS, judge, load_ground_truth  # noqa: E402

#: steps of the complete search (the rest are the incomplete cascade, attacks, bisection)
COMPLETE_STEPS = ("alpha-crown", "milp", "bab")


def seeded_sample(insts, n, seed, name):
    """``n`` instances drawn without replacement, the same for every run with ``seed``."""
    if n is None or n >= len(insts):
        return list(insts)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    idx = sorted(rng.choice(len(insts), size=n, replace=False))
    return [insts[i] for i in idx]


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def step_stats(logs):
    """Per family: decided-by counts, alpha-vs-CROWN margins, BaB throughput, time per step."""
    decided, where = Counter(), defaultdict(float)
    gains, alpha_closed = [], 0
    bab_bounded, bab_time, bab_runs, open_at_end = 0, 0.0, 0, []
    for entry in logs:
        steps = entry.get("log") or []
        for s in steps:
            where[s["step"].split(":")[0]] += float(s.get("time", 0.0))
            if s["step"] == "alpha-crown" and "worst_margin" in s:
                gains.append(s["worst_margin"] - s["crown_worst_margin"])
            if s["step"] == "bab":
                bab_runs += 1
                bab_bounded += int(s.get("bounded", 0))
                bab_time += float(s.get("time", 0.0))
                if s.get("result") != "proved" and entry["result"] not in ("sat", "unsat"):
                    open_at_end.append(int(s.get("max_queue", 0)))
        if entry["result"] in ("sat", "unsat") and steps:
            decided[steps[-1]["step"].split(":")[0]] += 1
            if steps[-1]["step"] == "alpha-crown":
                alpha_closed += 1
    return {"decided_by": dict(decided), "time_by_step_s": {k: round(v, 1) for k, v in sorted(where.items())},
            "alpha_vs_crown_worst_margin_gain": {
                "n": len(gains), "median": round(float(np.median(gains)), 4) if gains else None,
                "mean": round(float(np.mean(gains)), 4) if gains else None},
            "decided_by_alpha_crown": alpha_closed,
            "bab": {"runs": bab_runs, "subdomains": bab_bounded, "time_s": round(bab_time, 1),
                    "subdomains_per_s": round(bab_bounded / bab_time, 1) if bab_time > 0 else None,
                    "largest_queue_left_open": max(open_at_end) if open_at_end else None}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("benchmarks", nargs="*", help="benchmark folder names (default: all)")
    ap.add_argument("--families", default="", help="comma-separated benchmark folder names (added to the positional ones)")
    ap.add_argument("--bench-dir", default=str(DEFAULT_BENCH))
    ap.add_argument("--per-family", type=int, default=20, help="instances per benchmark family")
    ap.add_argument("--cap", type=float, default=60.0, help="per-instance time cap in seconds")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "out" / "complete"))
    ap.add_argument("--fresh", action="store_true", help="delete previous results first")
    ap.add_argument("--redo", default="", help="verdicts of a previous run in --out to redo, e.g. timeout,unknown")
    args = ap.parse_args(argv)

    from onnxverify.report import format_table
    from onnxverify.vnncomp import read_instances, run_instances

    bench_dir = Path(args.bench_dir)
    names = args.benchmarks + [f for f in args.families.split(",") if f]
    names = names or sorted(p.name for p in bench_dir.iterdir() if (p / "instances.csv").exists())
    gt = load_ground_truth(bench_dir)
    out = Path(args.out)
    groups = []
    for name in names:
        insts = read_instances(bench_dir / name / "instances.csv", benchmark=name)
        groups.append((name, seeded_sample(insts, args.per_family, args.seed, name), str(out / name)))
    load_start, t0 = _load(), time.monotonic()
    results = run_instances([(insts, d) for _, insts, d in groups], timeout_cap=args.cap, workers=args.workers,
                            progress=True, fresh=args.fresh, redo=[v for v in args.redo.split(",") if v])
    wall, load_end = time.monotonic() - t0, _load()

    table, summary, rows_out, cache = [], {}, [], {}
    for name, insts, d in groups:
        ours = {(r["onnx"], r["vnnlib"]): r for r in results[d]}
        keys = {it.key for it in insts}
        logs = []
        if os.path.exists(os.path.join(d, "log.jsonl")):
            with open(os.path.join(d, "log.jsonl")) as f:
                logs = [e for e in map(json.loads, f) if (e["onnx"], e["vnnlib"]) in keys]
        c, a, a_cap = Counter(), Counter(), Counter()
        unsound = 0
        for it in insts:
            r = ours.get(it.key)
            if r is None:
                continue
            j = judge(name, it, r, gt, d, cache, args.cap)
            verdict, ab = j["result"], j["abcrown"]
            c[verdict] += 1
            a[ab if ab in ("sat", "unsat") else "other"] += 1
            if j["abcrown_within_cap"]:
                a_cap[ab] += 1
            unsound += j["unsound"]
            rows_out.append({"benchmark": name, "onnx": it.onnx, "vnnlib": it.vnnlib, "result": verdict,
                             "time": r["time"], "expected": j["expected"], "abcrown": ab,
                             "abcrown_time": j["abcrown_time"]})
        st = step_stats(logs)
        solved = c["sat"] + c["unsat"]
        summary[name] = {"instances": sum(c.values()), "ours": dict(c), "abcrown": dict(a),
                         "abcrown_within_cap": dict(a_cap), "solved": solved, "abcrown_solved": a["sat"] + a["unsat"],
                         "unsound": unsound, **st}
        gain = st["alpha_vs_crown_worst_margin_gain"]
        table.append([name, sum(c.values()), c["sat"], c["unsat"], c["unknown"], c["timeout"], c["error"],
                      f"{a['sat']}/{a['unsat']}", f"{a_cap['sat']}/{a_cap['unsat']}", solved, a["sat"] + a["unsat"],
                      unsound, ", ".join(f"{k} {v}" for k, v in sorted(st["decided_by"].items())),
                      "" if gain["median"] is None else f"{gain['median']:+.3g} ({gain['n']})",
                      st["bab"]["subdomains_per_s"] or ""])
    headers = ["family", "n", "sat", "unsat", "unkn", "t/o", "err", "abcrown s/u", f"abcrown<={args.cap:g}s s/u",
               "ours solved", "abcrown solved", "UNSOUND", "decided by", "alpha-CROWN gain (median, n)",
               "BaB subdomains/s"]
    tot = {k: sum(s[k] for s in summary.values()) for k in ("instances", "solved", "abcrown_solved", "unsound")}
    table.append(["all", tot["instances"], *[sum(s["ours"].get(v, 0) for s in summary.values()) for v in VERDICTS],
                  "", "", tot["solved"], tot["abcrown_solved"], tot["unsound"], "", "", ""])
    print(format_table(headers, table))
    print(f"cap {args.cap:g} s, {args.per_family} per family (seed {args.seed}), {args.workers} worker(s), "
          f"wall {wall:.0f} s, load average {load_start} -> {load_end}; results in {out}")
    write_summary(out, {"cap_s": args.cap, "per_family": args.per_family, "seed": args.seed, "workers": args.workers,
                        "wall_s": round(wall, 1), "load_average_start": load_start, "load_average_end": load_end},
                  summary, tot, rows_out, csv_name="rows.csv")
    return 1 if tot["unsound"] else 0


if __name__ == "__main__":
    sys.exit(main())
