"""CLI command ``onnxverify run``: VNN-COMP suites on local processes or a Ray cluster."""
from __future__ import annotations

import os
import sys
import time

import click

from .common import friendly_errors


@click.command("run")
@click.argument("instances", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default="vnncomp_results", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (one sub-folder per benchmark when several csv files are given).")
@click.option("--timeout-cap", type=float, default=None, help="Cap every instance's timeout at this many seconds.")
@click.option("--methods", default=None, help="Bound cascade (see `onnxverify verify --help`).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes on this machine; ray: one Ray task per instance (onnxverify[distributed]).")
@click.option("--workers", type=int, default=None,
              help="local: instances run in parallel (default 1); ray: at most this many tasks in flight "
                   "(default: twice what the cluster fits).")
@click.option("--address", default=None,
              help="ray: the cluster, 'auto' (the one `ray start` runs on this machine) or HOST:PORT; "
                   "default: RAY_ADDRESS, else the last cluster started here, else a private one on this machine.")
@click.option("--cpus-per-instance", type=float, default=None, help="ray: CPUs each instance reserves (default 1).")
@click.option("--gpus-per-instance", type=float, default=None,
              help="ray: GPUs each instance reserves, fractions allowed (0.25: four instances per GPU; default 0).")
@click.option("--fresh", is_flag=True, help="Start over: delete results.csv, log.jsonl and results/ first.")
@click.option("--redo", default="", metavar="VERDICTS",
              help="Redo the rows with these verdicts, e.g. unknown,timeout,error (others with the same settings are reused).")
@click.option("--no-progress", is_flag=True, help="No progress (bar on a terminal, one line per instance otherwise).")
@friendly_errors
def run_command(instances, out_dir, timeout_cap, methods, engine, workers, address, cpus_per_instance,
                gpus_per_instance, fresh, redo, no_progress):
    """Run VNN-COMP INSTANCES csv file(s) (onnx,vnnlib,timeout; paths relative to the csv).

    Writes one result file per instance, results.csv (a row per instance, appended as
    instances finish, with the settings that produced it) and log.jsonl, and prints a summary
    table per benchmark plus the reason of every error row. Rerunning resumes: rows made with
    the same timeout, cap, methods and onnxverify version are reused, the others redone.
    """
    from ..errors import InputError
    from ..verify import parse_methods
    from ..vnncomp import VERDICTS, error_lines, read_instances, run_instances, summary_table

    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if timeout_cap is not None and not timeout_cap > 0:
        raise InputError(f"--timeout-cap must be > 0, got {timeout_cap}")
    if engine != "ray":
        given = [n for n, v in (("--address", address), ("--cpus-per-instance", cpus_per_instance),
                                ("--gpus-per-instance", gpus_per_instance)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} need(s) --engine ray")
    cpus = 1.0 if cpus_per_instance is None else cpus_per_instance
    gpus = 0.0 if gpus_per_instance is None else gpus_per_instance
    if not cpus > 0 or gpus < 0:
        raise InputError(f"--cpus-per-instance must be > 0 and --gpus-per-instance >= 0, got {cpus:g}, {gpus:g}")
    redo_set = [v.strip().lower() for v in redo.split(",") if v.strip()]
    bad = [v for v in redo_set if v not in VERDICTS]
    if bad:
        raise InputError(f"--redo takes verdicts ({','.join(VERDICTS)}), got {','.join(bad)}")
    if methods is not None:
        parse_methods(methods)  # validate early
    groups, names = [], []
    for path in instances:
        insts = read_instances(path)
        name = insts[0].benchmark
        if name in names:
            name = f"{name}_{len(names)}"
        names.append(name)
        groups.append((insts, out_dir if len(instances) == 1 else os.path.join(out_dir, name)))
    t0 = time.monotonic()
    try:
        results = run_instances(groups, timeout_cap=timeout_cap, workers=workers, methods=methods,
                                progress=False if no_progress else "auto", engine=engine, address=address,
                                cpus_per_instance=cpus, gpus_per_instance=gpus, fresh=fresh, redo=redo_set,
                                echo=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo(f"interrupted: finished rows are in {out_dir}; rerun the same command to resume", err=True)
        sys.exit(130)
    by_name = {n: results[d] for n, (_, d) in zip(names, groups)}
    click.echo(summary_table(by_name))
    for line in error_lines(by_name):
        click.echo(line)
    click.echo(f"results in {out_dir} ({time.monotonic() - t0:.0f} s)")


run_command.name = "run"
COMMANDS = [run_command]

__all__ = ["COMMANDS"]
