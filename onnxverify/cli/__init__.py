"""The ``onnxverify`` command line (click): one module per group of commands.

Every command follows one error policy (:mod:`onnxverify.cli.common`): a user mistake (an
:class:`~onnxverify.errors.OnnxVerifyError`: missing file, unsupported op, bad shape, NaN,
eps < 0, ...; or a bad option) is one ``error:`` line on stderr and exit code 2; an internal
error says "please report" and exits 3; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import click

from . import model, ops, run, stats, train, verify
from .common import CliGroup


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for the array libraries (default: $ONNXVERIFY_THREADS, else the cores, "
                   "fewer while other processes load them).")
@click.version_option(package_name="onnxverify")
def main(debug, threads):
    """onnxverify: sound output bounds and verification for ONNX neural networks."""
    if threads is not None:
        from ..backend import threads as policy

        policy.configure(threads)


for _module in (model, ops, verify, run, stats, train):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":
    main()
