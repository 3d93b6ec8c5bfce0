"""Neuron branch and bound throughput on one instance: run the cascade up to the BaB step
(its inputs are captured there), then run branch and bound for ``--seconds`` once per
``--config`` on the same root and print one JSON line per run: result, subdomains, rounds,
proofs, the seconds of each part, and when each disjunct was proved. For profiling and
tuning :mod:`onnxverify.verify.bab` (numbers are comparable within one run only).

    flock /work/bench.lock env OMP_NUM_THREADS=1 python benchmarks/bab_rounds.py MODEL PROPERTY \\
        --seconds 30 --config "" --config "fast_dtype=np.float64" --config "joint=1"

A config is ``NAME=VALUE;...`` with :class:`~onnxverify.verify.bab.BabSettings` attribute
names (values are Python expressions; ``np`` is NumPy) and ``joint=1``: one search over
every disjunct at once instead of one per disjunct (the cascade's way).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def capture(model, prop, timeout):
    """The cascade's arguments of :func:`bab_by_disjunct` (None when it decided earlier)."""
    from onnxverify.verify import bab, cascade
    from onnxverify.verify.deadline import TimeUp

    box = {}
    real = bab.bab_by_disjunct

    def grab(s, cs, P, root_alpha, root_lower, stats, settings=None, proved=None):
        box.update(s=s, cs=cs, P=P, root_alpha=root_alpha, root_lower=root_lower)
        raise TimeUp()

    bab.bab_by_disjunct = grab
    try:
        r = cascade.verify(model, prop, timeout=timeout)
    finally:
        bab.bab_by_disjunct = real
    return box or None, r


def run_once(box, cfg, joint, seconds, profile=None):
    from onnxverify.verify import bab
    from onnxverify.verify.deadline import Decided, TimeUp

    s, P = box["s"], box["P"]
    stats, done, t0 = {}, [], time.monotonic()
    s.deadline = t0 + seconds
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    try:
        if joint:
            ok = bab.neuron_bab(s, box["cs"], P, box["root_alpha"], np.ones(P.n_disj, bool), stats, cfg)
        else:
            ok = bab.bab_by_disjunct(s, box["cs"], P, box["root_alpha"], box["root_lower"], stats, cfg,
                                     lambda j: done.append([j, round(time.monotonic() - t0, 2), stats["bounded"]]))
        result = "proved" if ok else "gave up"
    except TimeUp:
        result = "timeout"
    except Decided as e:
        result = e.verdict
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    dt = time.monotonic() - t0
    return {"result": result, "time_s": round(dt, 2), "rows": len(P.b), "disjuncts": P.n_disj,
            "dtype": np.dtype(P.dtype).name, "domains_per_s": round(stats.get("bounded", 0) / dt, 1),
            "proved_at": done, **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in stats.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("prop")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="budget of the cascade before the BaB step (large: its steps are not cut short)")
    ap.add_argument("--config", action="append", default=[], help="see the module docstring (repeatable)")
    ap.add_argument("--profile", help="write a cProfile of the (last) run here")
    args = ap.parse_args(argv)

    from onnxverify.verify.bab import BabSettings

    box, r = capture(args.model, args.prop, args.timeout)
    if box is None:
        print(json.dumps({"verdict": r.verdict, "note": "decided before branch and bound"}))
        return
    for spec in args.config or [""]:
        cfg, joint = BabSettings(), False
        for kv in filter(None, spec.split(";")):
            k, v = kv.split("=", 1)
            if k == "joint":
                joint = bool(eval(v))
            else:
                setattr(cfg, k, eval(v, {"np": np}))
        print(json.dumps({"config": spec, **run_once(box, cfg, joint, args.seconds, args.profile)}), flush=True)


if __name__ == "__main__":
    main()
