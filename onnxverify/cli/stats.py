"""CLI command ``onnxverify stats``: neuron statuses per layer (registered by onnxverify.cli)."""
from __future__ import annotations

import json
import time

import click
import numpy as np

from .common import (check_backend, check_eps, check_memory, check_plot_dependency, friendly_errors, load_input,
                     load_network)


@click.command("stats")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input", "input_path", type=click.Path(dir_okay=False), required=True,
              help="Centre(s) of the input set (.npy; a leading batch axis averages over samples).")
@click.option("--eps", type=float, required=True, help="Radius of the ball around the input.")
@click.option("--norm", type=click.Choice(["inf", "1", "2"]), default="inf", show_default=True)
@click.option("--clip", nargs=2, type=float, default=None, help="Data range LO HI for l_inf balls (e.g. 0 1).")
@click.option("--method", default="ibp", show_default=True,
              help="Whose pre-activation bounds: ibp, lbp, crown-ibp, crown-lbp, crown or relaxed-crown-V "
                   "(crown-ibp's equal ibp's, crown-lbp's equal lbp's).")
@click.option("--strategy", type=click.Choice(["constant", "tight", "adaptive"]), default=None,
              help="Bounding-line strategy of the linear methods (default adaptive).")
@click.option("--backend", default="numpy", show_default=True, help="numpy, torch, cupy or auto.")
@click.option("--float64", "use_f64", is_flag=True, help="Compute in float64.")
@click.option("--max-memory", type=float, default=None, help="Memory limit in GB for the linear methods.")
@click.option("--counts", "raw_counts", is_flag=True, help="Print counts only (no percentages).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw a stacked bar chart per layer (PNG, PDF or SVG; needs matplotlib).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the counts as JSON.")
@friendly_errors
def stats(model, input_path, eps, norm, clip, method, strategy, backend, use_f64, max_memory, raw_counts,
          plot_path, json_path):
    """Neuron statuses of MODEL's ReLU/LeakyReLU/ParamRamp layers over an l_p ball.

    ReLU family: dead / unstable / alive. ParamRamp: left dead / left unstable / alive /
    right unstable / right dead / unstable. Counts sum over the samples in --input.
    """
    from .. import make_input_set
    from ..bounds.status import neuron_status
    from ..report.status import format_status_table, plot_status

    check_plot_dependency(plot_path)  # fail before the work, in one line
    check_backend(backend)
    check_eps(eps)
    limit = check_memory(max_memory)
    net = load_network(model)
    x = load_input(input_path, net)
    iset = make_input_set(x, eps, norm, tuple(clip) if clip else None)
    t0 = time.perf_counter()
    sts = neuron_status(net, iset, method=method, strategy=strategy, backend=backend,
                        dtype=np.float64 if use_f64 else np.float32,
                        max_memory=limit)
    elapsed = time.perf_counter() - t0
    if not sts:
        click.echo("the model has no ReLU, LeakyReLU or ParamRamp layers: no neuron statuses")
        return
    click.echo(format_status_table(sts, percent=not raw_counts))
    strat = f" / {sts[0].strategy}" if sts[0].strategy else ""
    click.echo(f"method {method}{strat}, eps {eps} (l_{norm}), {x.shape[0]} sample(s), {elapsed:.4f} s")
    if plot_path:
        plot_status(sts, plot_path, title=f"{model.rsplit('/', 1)[-1]}: eps {eps} (l_{norm}), {method}{strat}")
        click.echo(f"wrote {plot_path}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"model": model, "method": method, "strategy": sts[0].strategy, "eps": eps, "norm": norm,
                       "samples": int(x.shape[0]), "time_s": elapsed,
                       "layers": [{"index": s.index, "node": s.name, "op": s.op, "neurons": s.size,
                                   "counts": s.counts} for s in sts]}, f, indent=1)
        click.echo(f"wrote {json_path}")


COMMANDS = [stats]
