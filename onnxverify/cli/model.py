"""Commands on one model: ``check``, ``bounds``, ``compare`` and ``methods``."""
from __future__ import annotations

import json
import os
import sys
import time

import click
import numpy as np

from ..report.tables import format_table
from .common import BUNDLED_DIR, BUNDLED_INPUT, BUNDLED_MODEL, friendly_errors, load_input, load_network


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
    click.echo(f"input   {net.graph.input.name}  sample shape {net.input_shape}")
    click.echo(f"output  {net.graph.output}  sample shape {net.output_shape}")
    counts = net.graph.op_counts()
    click.echo(format_table(["IR op", "count"], sorted(counts.items())))
    if show_graph:
        click.echo(net.graph.summary())
    rep = net.check(n_samples=samples, rtol=rtol, atol=atol)
    status = "OK" if rep.ok else "MISMATCH"
    click.echo(f"forward vs onnxruntime on {rep.n_samples} random inputs: max abs err {rep.max_abs_error:.3g}, "
               f"max rel err {rep.max_rel_error:.3g} -> {status} ({time.perf_counter() - t0:.2f} s)")
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
              help="ibp, lbp, crown-ibp, crown-lbp, crown or relaxed-crown-V.")
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

    if model is None:
        model, input_path = BUNDLED_MODEL, input_path or BUNDLED_INPUT
        eps = 0.02 if eps is None else eps
        clip = clip or (0.0, 1.0)
        if label is None:
            label = int(open(os.path.join(BUNDLED_DIR, "digits_x0_label.txt")).read())
        click.echo(f"(bundled example: {os.path.basename(model)}, label {label})")
    if input_path is None or eps is None:
        raise InputError("--input and --eps are required (or give no MODEL for the bundled example)")
    net = load_network(model)
    x = load_input(input_path, net)
    spec = margin_spec([label] * x.shape[0], net.n_outputs) if label is not None else None
    iset = make_input_set(x, eps, norm, tuple(clip) if clip else None)
    res = net.bounds(iset, method=method, spec=spec, strategy=strategy, backend=backend,
                     dtype=np.float64 if use_f64 else np.float32,
                     max_memory=int(max_memory * 2**30) if max_memory else None)
    lo, hi = np.asarray(res.lower, dtype=np.float64), np.asarray(res.upper, dtype=np.float64)
    rows = []
    names = ([f"y{label}-y{j}" for j in range(net.n_outputs) if j != label] if label is not None
             else [f"y{j}" for j in range(lo.reshape(lo.shape[0], -1).shape[1])])
    for b in range(lo.shape[0]):
        for k, name in enumerate(names):
            rows.append([b, name, f"{lo.reshape(lo.shape[0], -1)[b, k]:.6g}", f"{hi.reshape(hi.shape[0], -1)[b, k]:.6g}"])
    click.echo(format_table(["sample", "output", "lower", "upper"], rows))
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
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Bound range vs eps, per method (PNG).")
@friendly_errors
def compare(model, input_path, eps, norm, clip, label, max_memory, plot_path):
    """Run every method and strategy on one input set: width, margin, verified, time, memory."""
    from .. import make_input_set, margin_spec
    from ..report.compare import DEFAULT_RUNS, compare_methods, plot_tightness

    net = load_network(model)
    x = load_input(input_path, net)
    labels = [label] * x.shape[0] if label is not None else net.forward(x).reshape(x.shape[0], -1).argmax(1)
    spec = margin_spec(labels, net.n_outputs)
    limit = int(max_memory * 2**30) if max_memory else None
    clip = tuple(clip) if clip else None
    results = compare_methods(net, make_input_set(x, eps, norm, clip), spec, DEFAULT_RUNS, limit)
    rows = [[r.label, f"{r.mean_width:.5g}", f"{r.margin_lower:.5g}", f"{r.verified}/{r.n}", f"{r.time_s:.4f}",
             f"{r.peak_mb:.1f}"] if not r.error else [r.label, "-", "-", "-", "-", "does not fit: " + r.error[:60]]
            for r in results]
    click.echo(f"margins of label(s) {list(map(int, labels))}, eps {eps} (l_{norm})")
    click.echo(format_table(["method", "mean width", "min margin lb", "verified", "time s", "peak MB"], rows))
    if plot_path:
        eps_values = [eps * f for f in (0.25, 0.5, 1.0, 1.5, 2.0)]
        plot_tightness(net, lambda e: make_input_set(x, e, norm, clip), spec, eps_values, DEFAULT_RUNS,
                       plot_path, limit)
        click.echo(f"wrote {plot_path}")


@click.command()
def methods():
    """List the bound methods and strategies."""
    from ..bounds import METHODS, STRATEGIES

    click.echo("methods:    " + ", ".join(METHODS))
    click.echo("strategies: " + ", ".join(STRATEGIES))


COMMANDS = [check, bounds, compare, methods]
