"""onnxverify vs auto_LiRPA 0.7.1 on the same ONNX files, in one run (issue 12).

The four reference models of ../shared/anchors/build_models.py (``$ANCHOR_MODEL_DIR``,
default ../anchor_models: mlp, mnist_bn, cnn4, dm_large, each raw and scaled), the margin
spec of the predicted class on the box ``[clip(x - eps, 0, 1), clip(x + eps, 0, 1)]``.
Every measurement is a fresh process (ours: this script's ``--worker``; theirs:
../shared/anchors/lirpa_bounds.py in the auto_LiRPA venv): one untimed warm-up, then the
median of up to 3 timed calls, CPU time of those calls, peak RSS of the process and its
increase over the RSS before bounding. Ours and theirs alternate, ``--rounds`` times (the
table shows medians over rounds), both with the same pinned thread count (``--threads``:
torch.set_num_threads there, ``ONNXVERIFY_THREADS`` here). The load average is recorded
with every row and the table. Ours uses torch's conv kernels from the untimed warm-up on
(``--torch-after 0``; a short ``verify`` run keeps NumPy's until importing torch pays).

    python benchmarks/lirpa_compare.py                         # everything (hours on 2 cores)
    python benchmarks/lirpa_compare.py --models mnist_bn_scaled,cnn4_scaled --methods crown-ibp,crown
    python benchmarks/lirpa_compare.py --models cnn4_scaled --methods crown --append   # add rows
    python benchmarks/lirpa_compare.py --table benchmarks/results/lirpa_compare.json   # print a saved table

Methods (ours -> auto_LiRPA): ibp -> IBP, crown-ibp -> CROWN-IBP, crown -> CROWN,
crown-lbp -> forward+backward, lbp -> forward. Our ``lbp`` bounds the output by one backward
layer before substituting the forward maps, auto_LiRPA's ``forward`` by the maps alone: its
widths differ (the table says whether widths agree to 4 significant digits).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT.parent / "shared" / "anchors"
MODELS = ["mlp_raw", "mlp_scaled", "mnist_bn_raw", "mnist_bn_scaled", "cnn4_raw", "cnn4_scaled", "dm_large_raw",
          "dm_large_scaled"]
METHODS = ["ibp", "crown-ibp", "lbp", "crown-lbp", "crown"]
THEIRS = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN", "crown-lbp": "forward+backward", "lbp": "forward"}


def _model_dir() -> Path:
    return Path(os.environ.get("ANCHOR_MODEL_DIR", ROOT.parent / "anchor_models"))


def _eps(name: str) -> float:
    return 0.02 if name.startswith("mnist_bn") else 2 / 255


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---- one measurement of ours (fresh process) ----------------------------------------------------
def worker(args):
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import onnxverify
    from onnxverify.specs.input_sets import Box

    d = _model_dir()
    man = json.loads((d / "manifest.json").read_text())["models"][args.model]
    x = np.load(man["input"]).astype(np.float32)
    net = onnxverify.load(man["onnx"])
    pred, n = int(man["pred"]), len(man["clean_logits"])
    C = np.zeros((1, n - 1, n), np.float32)
    for r, j in enumerate(k for k in range(n) if k != pred):
        C[0, r, pred], C[0, r, j] = 1.0, -1.0
    box = Box(np.clip(x - args.eps, 0, 1), np.clip(x + args.eps, 0, 1))
    rss0 = _rss_mb()
    times, cpus = [], []
    for i in range(1 + args.reps):
        t, c = time.perf_counter(), time.process_time()
        b = net.bounds(box, method=args.method, spec=C, strategy="adaptive")
        dt, dc = time.perf_counter() - t, time.process_time() - c
        if i:
            times.append(dt)
            cpus.append(dc)
        if sum(times) + dt > args.rep_budget:
            break
    lo, hi = np.asarray(b.lower, np.float64).ravel(), np.asarray(b.upper, np.float64).ravel()
    res = {"t_median_s": statistics.median(times) if times else dt, "time_is_warmup_only": not times,
           "cpu_median_s": statistics.median(cpus) if cpus else dc, "maxrss_mb": resource.getrusage(
               resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_bounds_mb": rss0, "lb": lo.tolist(),
           "ub": hi.tolist(), "mean_width": float((hi - lo).mean()), "torch_loaded": "torch" in sys.modules}
    print("RESULT " + json.dumps(res), flush=True)


# ---- driver ------------------------------------------------------------------------------------------
def _run(cmd, env, timeout):
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": time.perf_counter() - t0}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r.setdefault("status", "ok")
            return r
    return {"status": "error", "stderr": out.stderr[-2000:]}


def measure_ours(model, method, eps, a):
    env = dict(os.environ, ONNXVERIFY_THREADS=str(a.threads), PYTHONPATH=str(ROOT),
               ONNXVERIFY_TORCH_AFTER=str(a.torch_after))
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--method", method, "--eps", repr(eps),
           "--reps", str(a.reps), "--rep-budget", str(a.rep_budget)]
    return _run(cmd, env, a.timeout)


def measure_theirs(model, method, eps, a):
    man = json.loads((_model_dir() / "manifest.json").read_text())["models"][model]
    cmd = [a.lirpa_python, str(ANCHORS / "lirpa_bounds.py"), man["onnx"], man["input"], repr(eps), THEIRS[method],
           "margin", "--reps", str(a.reps), "--threads", str(a.threads), "--rep-budget", str(a.rep_budget),
           "--budget", str(a.timeout)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return _run(cmd, env, a.timeout)


def _same4(a, b) -> bool | None:
    """Widths equal to 4 significant digits (relative 5e-4, absolute 1e-6)."""
    if a is None or b is None:
        return None
    return all(abs(x - y) <= max(1e-6, 5e-4 * max(abs(x), abs(y))) for x, y in zip(a, b))


def summarize(rows) -> list:
    """One line per (model, method): medians over rounds, ratios ours / theirs."""
    out = []
    for key in dict.fromkeys((r["model"], r["method"]) for r in rows):
        rs = [r for r in rows if (r["model"], r["method"]) == key]

        def med(side, field):
            v = [r[side][field] for r in rs if r[side].get("status") == "ok" and r[side].get(field) is not None]
            return statistics.median(v) if v else None

        o, t = rs[-1]["ours"], rs[-1]["theirs"]
        ow = [u - l for l, u in zip(o.get("lb", []), o.get("ub", []))] or None
        tw = [u - l for l, u in zip(t.get("lb", []), t.get("ub", []))] or None
        line = {"model": key[0], "method": key[1], "rounds": len(rs), "load_1min": statistics.median(r["load"] for r in rs)}
        for f in ("t_median_s", "cpu_median_s", "maxrss_mb"):
            line[f"ours_{f}"], line[f"theirs_{f}"] = med("ours", f), med("theirs", f)
        line["ours_mem_mb"] = _delta(rs, "ours")
        line["theirs_mem_mb"] = _delta(rs, "theirs")
        for f in ("t_median_s", "cpu_median_s", "maxrss_mb", "mem_mb"):
            a, b = line[f"ours_{f}"], line[f"theirs_{f}"]
            line[f"ratio_{f}"] = (a / b) if a is not None and b else None
        line["ours_width"] = o.get("mean_width")
        line["theirs_width"] = t.get("mean_width")
        line["widths_equal_4_digits"] = _same4(ow, tw)
        line["ours_status"], line["theirs_status"] = o.get("status"), t.get("status")
        out.append(line)
    return out


def _delta(rs, side):
    v = [r[side]["maxrss_mb"] - r[side]["rss_before_bounds_mb"] for r in rs
         if r[side].get("status") == "ok" and r[side].get("rss_before_bounds_mb") is not None]
    return statistics.median(v) if v else None


def table(summary, meta) -> str:
    f = lambda v, p=3: "-" if v is None else f"{v:.{p}g}"  # noqa: E731
    head = ("| model | method | ours s | theirs s | time ratio | CPU ratio | peak RSS ours/theirs MB | "
            "RSS increase ours/theirs MB | mem ratio | width ours / theirs | equal (4 digits) | load |")
    lines = [head, "|" + "---|" * 12]
    for s in summary:
        lines.append(f"| {s['model']} | {s['method']} | {f(s['ours_t_median_s'])} | {f(s['theirs_t_median_s'])} | "
                     f"{f(s['ratio_t_median_s'], 2)} | {f(s['ratio_cpu_median_s'], 2)} | "
                     f"{f(s['ours_maxrss_mb'], 4)} / {f(s['theirs_maxrss_mb'], 4)} | "
                     f"{f(s['ours_mem_mb'], 4)} / {f(s['theirs_mem_mb'], 4)} | {f(s['ratio_mem_mb'], 2)} | "
                     f"{f(s['ours_width'], 5)} / {f(s['theirs_width'], 5)} | {s['widths_equal_4_digits']} | "
                     f"{s['load_1min']:.1f} |")
    lines.append(f"\n{meta.get('threads')} threads each, {meta.get('cpus')} CPUs, load average "
                 f"{meta.get('load_start')} at start, {meta.get('load_end')} at end; {meta.get('date')}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--eps", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=2, help="fresh-process pairs (ours, theirs) per row")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per process after one warm-up")
    ap.add_argument("--rep-budget", type=float, default=60.0, help="stop timing calls after this many seconds")
    ap.add_argument("--threads", type=int, default=1, help="threads of both (pinned)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--lirpa-python", default=str(ROOT.parent / "lirpa-venv" / "bin" / "python"))
    ap.add_argument("--json", default="benchmarks/results/lirpa_compare.json")
    ap.add_argument("--append", action="store_true", help="add the rows to those already in --json (replacing "
                    "earlier rows of the same model and method)")
    ap.add_argument("--torch-after", type=int, default=0,
                    help="ours: ONNXVERIFY_TORCH_AFTER (0: torch's conv kernels from the untimed warm-up on, the steady "
                         "state of a long run; auto_LiRPA's torch import is not timed either)")
    ap.add_argument("--table", default=None, help="print the table of a saved JSON file and exit")
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    if a.table:
        data = json.loads(Path(a.table).read_text())
        print(table(data["summary"], data["meta"]))
        return
    meta = {"threads": a.threads, "cpus": os.cpu_count(), "load_start": [round(v, 2) for v in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": a.rounds, "reps": a.reps}
    rows = []
    if a.append and Path(a.json).exists():
        old = json.loads(Path(a.json).read_text())
        todo = {(m, k) for m in a.models.split(",") for k in a.methods.split(",")}
        rows = [r for r in old["rows"] if (r["model"], r["method"]) not in todo]
        meta["load_start"] = old["meta"]["load_start"]
        meta["date"] = old["meta"]["date"] + " to " + meta["date"]
    for model in a.models.split(","):
        for method in a.methods.split(","):
            eps = _eps(model)
            for _ in range(a.rounds):
                load = os.getloadavg()[0]
                o = measure_ours(model, method, eps, a)
                t = measure_theirs(model, method, eps, a)
                rows.append({"model": model, "method": method, "eps": eps, "load": load, "commit": _commit(), "ours": o,
                             "theirs": t})
                print(f"{model:16s} {method:10s} ours {o.get('t_median_s', o.get('status'))} theirs "
                      f"{t.get('t_median_s', t.get('status'))} load {load:.1f}", flush=True)
            out = Path(a.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            meta["load_end"] = [round(v, 2) for v in os.getloadavg()]
            rows = [{**r, "ours": _slim(r["ours"]), "theirs": _slim(r["theirs"])} for r in rows]
            out.write_text(json.dumps({"meta": meta, "summary": summarize(rows), "rows": rows}, indent=1))
    print(table(summarize(rows), meta))


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def _slim(r):
    keep = ("status", "t_median_s", "t_reps_s", "cpu_median_s", "maxrss_mb", "rss_before_bounds_mb", "mean_width",
            "lb", "ub", "time_is_warmup_only", "torch_loaded", "threads", "loadavg_at_start")
    return {k: r[k] for k in keep if k in r}


if __name__ == "__main__":
    main()
