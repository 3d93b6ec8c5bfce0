"""CLI command ``onnxverify verify`` (registered by onnxverify.cli; ``run`` is in cli/run.py)."""
from __future__ import annotations

import os
import threading
import time

import click

from .common import friendly_errors

#: The longest finite --timeout (about 11.6 days): the alarm and watchdog timers take no more.
MAX_TIMEOUT = 1e6


def _write_error_result(path):
    if path:
        from ..vnncomp.results import write_result

        try:
            write_result(path, "error")
        except OSError:
            pass


def _watchdog(seconds, result_path):
    """Last resort: if the process is still busy ``seconds`` from now (a long C call that
    the in-process alarm cannot interrupt), write ``timeout`` and exit."""

    def fire():
        if result_path:
            from ..vnncomp.results import write_result

            try:
                write_result(result_path, "timeout")
            except OSError:
                pass
        print("timeout", flush=True)
        os._exit(0)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


@click.command("verify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("prop", metavar="PROPERTY", type=click.Path(dir_okay=False))
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Time limit in seconds (hard; at most 1e6, or inf for none).")
@click.option("--result", "result_path", type=click.Path(dir_okay=False),
              help="Write the VNN-COMP result file here (verdict line, counterexample for sat).")
@click.option("--methods", default=None,
              help="Bound cascade, cheap to tight: comma-separated METHOD[:STRATEGY] "
                   "(default ibp,crown-ibp:adaptive,crown-lbp:adaptive,crown:adaptive, without crown-lbp for "
                   "inputs of more than 1024 values; an unknown method or strategy is an error).")
@click.option("--no-split", is_flag=True, help="No input bisection (branch and bound on the input box).")
@click.option("--no-complete", is_flag=True,
              help="No complete steps (alpha-CROWN, MILP, beta-CROWN branch and bound on neuron splits).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the attacks.")
@click.option("--check-only", is_flag=True, help="Only load the model and parse the property (for prepare_instance).")
@click.option("-v", "--verbose", is_flag=True, help="Print every step.")
@friendly_errors
def verify_command(model, prop, timeout, result_path, methods, no_split, no_complete, seed, check_only, verbose):
    """Decide the VNN-LIB PROPERTY on MODEL: sat (with a counterexample), unsat, unknown,
    timeout or error.

    PROPERTY describes the unsafe set; unsat means proved safe. The verdict is printed and,
    with --result, written in the VNN-COMP format.
    """
    from ..errors import InputError
    from ..verify.cascade import parse_methods, verify
    from ..vnncomp.results import write_result

    if timeout is not None and not timeout > 0:
        raise InputError(f"--timeout must be > 0, got {timeout}")
    if timeout is not None and timeout != float("inf") and timeout > MAX_TIMEOUT:
        raise InputError(f"--timeout must be at most {MAX_TIMEOUT:g} s (or inf for no limit), got {timeout:g}")
    if timeout == float("inf"):
        timeout = None  # no limit, no watchdog
    t0 = time.monotonic()
    dog = None
    try:
        if methods is not None:
            parse_methods(methods)  # validate before any work; the string itself goes to verify()
        if check_only:
            from ..verify.loading import load_problem

            net, _, p, note = load_problem(model, prop)
            shape = net.input_shape if net is not None else "?"
            click.echo(f"ok: model input {shape} ({p.n_inputs} values), {p.n_outputs} outputs, "
                       f"{len(p.cases)} input case(s), {sum(len(c.y_disjuncts) for c in p.cases)} disjunct(s)"
                       + (f"; {note}" if note else ""))
            return
        if timeout is not None:
            dog = _watchdog(timeout + min(2.0, 0.1 * timeout + 0.5), result_path)

        def log_fn(entry):
            if verbose:
                extra = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("step", "time", "elapsed"))
                click.echo(f"[{entry['elapsed']:8.2f} s] {entry['step']}: {extra}", err=True)

        # methods=None when --methods is absent, as `run` does: verify() then applies its default
        # cascade and the large-input rule (no forward-map methods above LARGE_INPUT values)
        left = None if timeout is None else timeout - (time.monotonic() - t0)
        res = verify(model, prop, timeout=left, methods=methods,
                     seed=seed, split=not no_split, complete=not no_complete, log_fn=log_fn)
        if result_path:
            write_result(result_path, res.verdict, res.counterexample)
    except BaseException:
        _write_error_result(result_path)
        raise
    finally:
        if dog is not None:
            dog.cancel()
    click.echo(res.verdict)
    if verbose and res.decided_by:
        click.echo(f"decided by: {res.decided_by}", err=True)
    if res.verdict == "error":  # verify() contained a failure: the verdict stands, the exit code says which
        from .common import EXIT_INTERNAL, EXIT_USER

        click.echo(f"time {res.time:.2f} s", err=True)
        if res.message.startswith("out of memory"):
            click.echo(f"error: {res.message}", err=True)
            raise SystemExit(EXIT_USER)
        click.echo(f"error: internal error during verification: {res.message} -- this is a bug in onnxverify; "
                   "please report it with the model and the property", err=True)
        raise SystemExit(EXIT_INTERNAL)
    click.echo(f"time {res.time:.2f} s" + (f"; {res.message}" if res.message else ""), err=True)
    if res.verdict == "sat" and not result_path:
        x, y = res.counterexample
        click.echo(f"counterexample: {len(x)} inputs; outputs {', '.join(f'{v:.6g}' for v in y[:10])}"
                   + (" ..." if len(y) > 10 else ""), err=True)


verify_command.name = "verify"
COMMANDS = [verify_command]

__all__ = ["COMMANDS"]
