"""Commands on one model: ``check``, ``bounds``, ``compare`` and ``methods``."""
from __future__ import annotations

import json
import os
import sys
import time

import click
import numpy as np

from ..report.tables import format_table
from .common import (BUNDLED_DIR, BUNDLED_INPUT, BUNDLED_MODEL, bounded_part, check_backend, check_eps, check_memory,
                     check_plot_dependency, friendly_errors, load_input, load_network)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--samples", default=16, show_default=True, help="Random inputs to compare on.")
@click.option("--rtol", default=1e-5, show_default=True)
@click.option("--atol", default=1e-5, show_default=True)
@click.option("--graph", "show_graph", is_flag=True, help="Also print every IR node.")
@friendly_errors
def check(model, samples, rtol, atol, show_graph):
    """Import MODEL, print its shapes and ops, and compare IR forward with onnxruntime."""
    t0 = time.perf_counter()
    net = load_network(model)
    click.echo(f"model   {model}")
    click.echo(f"input   {net.graph.input.name}  sample shape {net.input_shape}"
               + (f"  ({net.graph.input.source})" if net.graph.input.source.startswith("graph inputs") else ""))
    out = net.graph[net.graph.output]
    click.echo(f"output  {net.graph.output}  sample shape {net.output_shape}"
               + (f"  ({out.source})" if out.source.startswith("graph outputs") else ""))
    counts = net.graph.op_counts()
    click.echo(format_table(["IR op", "count"], sorted(counts.items())))
    if show_graph:
        click.echo(net.graph.summary())
    rep = net.check(n_samples=samples, rtol=rtol, atol=atol)
    status = "OK" if rep.ok else "MISMATCH"
    if rep.n_nonfinite:
        click.echo(f"note: {rep.n_nonfinite} output value(s) are Inf/NaN in onnxruntime "
                   "(huge or non-finite weights?); bounds on this model are not meaningful", err=True)
    click.echo(f"forward vs onnxruntime on {rep.n_samples} random inputs in [-1, 1]: max |err| {rep.max_abs_error:.3g} "
               f"(max rel err {rep.max_rel_error:.3g}); test |err| <= atol + rtol |ref| with atol {atol:g}, "
               f"rtol {rtol:g}: worst |err| / allowed {rep.worst:.3g} -> {status} ({time.perf_counter() - t0:.2f} s)")
    if not rep.ok:
        sys.exit(1)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--input", "input_path", type=click.Path(dir_okay=False), help="Centre of the input set (.npy).")
@click.option("--eps", type=float, default=None, help="Radius of the ball around the input.")
@click.option("--norm", type=click.Choice(["inf", "1", "2"]), default="inf", show_default=True)
@click.option("--clip", nargs=2, type=float, default=None, help="Data range LO HI for l_inf balls (e.g. 0 1).")
@click.option("--label", type=int, default=None, help="True class: bound the margins y_label - y_j instead of the outputs.")
@click.option("--method", default="crown", show_default=True,
              help="ibp, lbp, crown-ibp, crown-lbp, crown, relaxed-crown-V or alpha-crown (optimised lines; needs torch).")
@click.option("--strategy", type=click.Choice(["constant", "tight", "adaptive"]), default=None,
              help="Bounding-line strategy of the linear methods.")
@click.option("--backend", default="numpy", show_default=True, help="numpy, torch, cupy or auto.")
@click.option("--float64", "use_f64", is_flag=True, help="Compute in float64.")
@click.option("--max-memory", type=float, default=None, help="Memory limit in GB for the linear methods "
              "(default: 60% of RAM).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the bounds as JSON.")
@friendly_errors
def bounds(model, input_path, eps, norm, clip, label, method, strategy, backend, use_f64, max_memory, json_path):
    """Sound bounds on MODEL's outputs (or margins) over an l_p ball.

    With no arguments, runs on the bundled digits MLP and sample image.
    """
    from .. import make_input_set, margin_spec
    from ..errors import InputError

    check_backend(backend)
    limit = check_memory(max_memory)
    if model is None:
        model, input_path = BUNDLED_MODEL, input_path or BUNDLED_INPUT
        eps = 0.02 if eps is None else eps
        clip = clip or (0.0, 1.0)
        if label is None:
            label = int(open(os.path.join(BUNDLED_DIR, "digits_x0_label.txt")).read())
        click.echo(f"(bundled example: {os.path.basename(model)}, label {label})")
    if input_path is None or eps is None:
        raise InputError("--input and --eps are required (or give no MODEL for the bundled example)")
    check_eps(eps)
    net = bounded_part(load_network(model))
    x = load_input(input_path, net)
    spec = margin_spec([label] * x.shape[0], net.n_outputs) if label is not None else None
    iset = make_input_set(x, eps, norm, tuple(clip) if clip else None)
    res = net.bounds(iset, method=method, spec=spec, strategy=strategy, backend=backend,
                     dtype=np.float64 if use_f64 else np.float32,
                     max_memory=limit)
    lo, hi = np.asarray(res.lower, dtype=np.float64), np.asarray(res.upper, dtype=np.float64)
    rows = []
    names = ([f"y{label}-y{j}" for j in range(net.n_outputs) if j != label] if label is not None
             else [f"y{j}" for j in range(lo.reshape(lo.shape[0], -1).shape[1])])
    for b in range(lo.shape[0]):
        for k, name in enumerate(names):
            rows.append([b, name, f"{lo.reshape(lo.shape[0], -1)[b, k]:.6g}", f"{hi.reshape(hi.shape[0], -1)[b, k]:.6g}"])
    click.echo(format_table(["sample", "output", "lower", "upper"], rows))
    n_inf = int((~np.isfinite(lo)).sum() + (~np.isfinite(hi)).sum())
    if n_inf:
        click.echo(f"note: {n_inf} bound(s) are infinite (the computation overflowed"
                   + ("; rerun with --float64" if not use_f64 else "") + ")", err=True)
    click.echo(f"method {res.method}{' / ' + res.strategy if res.strategy else ''}, eps {eps} (l_{norm}), "
               f"{res.time_s:.4f} s")
    verified = None
    if label is not None:
        verified = (lo.reshape(lo.shape[0], -1) > 0).all(axis=1).tolist()
        click.echo("verified robust: " + ", ".join("yes" if v else "no" for v in verified))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"method": res.method, "strategy": res.strategy, "lower": lo.tolist(), "upper": hi.tolist(),
                       "time_s": res.time_s, "eps": eps, "norm": norm, "label": label, "model": model,
                       "verified": verified}, f, indent=1)
        click.echo(f"wrote {json_path}")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False))
@click.option("--eps", type=float, required=True)
@click.option("--norm", type=click.Choice(["inf", "1", "2"]), default="inf", show_default=True)
@click.option("--clip", nargs=2, type=float, default=None, help="Data range LO HI for l_inf balls.")
@click.option("--label", type=int, default=None, help="True class (default: the predicted class).")
@click.option("--max-memory", type=float, default=None, help="Memory limit in GB for the linear methods.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw mean bound range vs eps, one line per method (PNG/PDF/SVG; needs matplotlib). "
                   "Reruns every method at each eps of the grid: eps x 0.25, 0.5, 1, 1.5, 2 unless --plot-eps "
                   "(about 4x the table's time; progress goes to stderr).")
@click.option("--plot-eps", default=None, help="Comma-separated eps values for --plot (instead of the grid).")
@friendly_errors
def compare(model, input_path, eps, norm, clip, label, max_memory, plot_path, plot_eps):
    """Run every method and strategy on one input set: width, margin, verified, time, memory.

    Columns: mean width (upper - lower, averaged over margins and samples), min margin lb
    (the smallest margin lower bound over all samples: > 0 means every sample is verified),
    verified samples, time and peak traced memory.
    """
    from .. import make_input_set, margin_spec
    from ..errors import InputError
    from ..report.compare import DEFAULT_RUNS, PLOT_EPS_FACTORS, compare_methods, plot_tightness

    check_plot_dependency(plot_path)  # before any work
    check_eps(eps)
    limit = check_memory(max_memory)
    eps_values = [eps * f for f in PLOT_EPS_FACTORS]
    if plot_eps is not None:
        try:
            eps_values = sorted({float(v) for v in plot_eps.split(",") if v.strip()})
        except ValueError:
            raise InputError(f"--plot-eps expects comma-separated numbers, got {plot_eps!r}") from None
        if not eps_values:
            raise InputError("--plot-eps is empty")
        for e in eps_values:
            check_eps(e, "--plot-eps")
    net = bounded_part(load_network(model))
    x = load_input(input_path, net)
    labels = [label] * x.shape[0] if label is not None else net.forward(x).reshape(x.shape[0], -1).argmax(1)
    spec = margin_spec(labels, net.n_outputs)
    clip = tuple(clip) if clip else None
    results = compare_methods(net, make_input_set(x, eps, norm, clip), spec, DEFAULT_RUNS, limit)
    rows = [[r.label, f"{r.mean_width:.5g}", f"{r.margin_lower:.5g}", f"{r.verified}/{r.n}", f"{r.time_s:.4f}",
             f"{r.peak_mb:.1f}"] if not r.error else [r.label, "-", "-", "-", "-", "does not fit: " + r.error[:60]]
            for r in results]
    click.echo(f"margins of label(s) {list(map(int, labels))}, eps {eps} (l_{norm})")
    click.echo(format_table(["method", "mean width", "min margin lb", "verified", "time s", "peak MB"], rows))
    if plot_path:
        table_s = sum(r.time_s for r in results if not r.error)
        todo = [e for e in eps_values if e != eps]
        click.echo(f"plot: {len(DEFAULT_RUNS)} runs at each of {len(todo)} more eps value(s) "
                   f"(about {table_s * len(todo):.0f} s)", err=True)

        def progress(i, e, seconds):
            click.echo(f"  eps {e:.6g} ({i + 1}/{len(eps_values)}): "
                       + ("from the table" if e == eps else f"{seconds:.1f} s"), err=True)

        name = os.path.basename(model)
        lab = ",".join(map(str, sorted(set(map(int, labels)))))
        title = (f"{name}: margins of label {lab}, {x.shape[0]} sample(s), l_{norm}"
                 + (f", clip [{clip[0]:g}, {clip[1]:g}]" if clip else "")
                 + f"\neps grid {', '.join(f'{e:.4g}' for e in eps_values)}")
        plot_tightness(net, lambda e: make_input_set(x, e, norm, clip), spec, eps_values, DEFAULT_RUNS,
                       plot_path, limit, title=title, known={eps: results}, on_eps=progress)
        click.echo(f"wrote {plot_path}")


@click.command()
def methods():
    """List the bound methods and strategies."""
    from ..bounds import METHODS, STRATEGIES

    click.echo("methods:    " + ", ".join(METHODS))
    click.echo("strategies: " + ", ".join(STRATEGIES))


COMMANDS = [check, bounds, compare, methods]
