"""What every command shares: one error policy, loading a model and an input, the bundled example.

Error policy (every command, through :func:`friendly_errors` and :class:`CliGroup`):

* a user mistake — an :class:`~onnxverify.errors.OnnxVerifyError` (bad file, unsupported op,
  wrong shape, NaN, eps < 0, unknown or missing backend, ...), a file that cannot be read or
  written, a click usage error (unknown option, bad value) — is one line ``error: ...`` on
  stderr that names the fix, and exit code 2;
* running out of memory is one line and exit 2 (the fix: a memory limit or a smaller input);
* Ctrl-C is ``error: interrupted`` and exit 130;
* anything else is a bug in onnxverify: one line that says so and asks for a report, exit 3.

``onnxverify --debug ...`` shows the traceback instead of the one line.
"""
from __future__ import annotations

import functools
import os
import sys

import click
import numpy as np

from ..errors import OnnxVerifyError

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
BUNDLED_MODEL = os.path.join(BUNDLED_DIR, "digits_mlp.onnx")
BUNDLED_INPUT = os.path.join(BUNDLED_DIR, "digits_x0.npy")

#: Exit codes: a user mistake, an internal error (a bug), an interrupt.
EXIT_USER, EXIT_INTERNAL, EXIT_INTERRUPT = 2, 3, 130
MAX_MESSAGE = 600  # characters of an error message that are printed


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE] + " ..."


#: Packages whose ValueError is their documented way of refusing bad settings or data (the
#: training commands); a ValueError from anywhere else is a bug. (Transitional: these should
#: raise DataError / OnnxVerifyError, which are user errors everywhere.)
VALUEERROR_PACKAGES = ("onnxverify.training", "onnxverify.converters")


def _raised_in(e: BaseException) -> str:
    """Module name of the innermost onnxverify frame where ``e`` was raised ('' if none)."""
    name, tb = "", e.__traceback__
    while tb is not None:
        mod = tb.tb_frame.f_globals.get("__name__", "")
        if mod.startswith("onnxverify.") and not mod.startswith("onnxverify.cli"):
            name = mod
        tb = tb.tb_next
    return name


def user_error_message(e: BaseException) -> str | None:
    """The one-line message of a user mistake, or None when ``e`` is an internal error."""
    if isinstance(e, OnnxVerifyError):
        return _first_line(e)
    if isinstance(e, ValueError) and _raised_in(e).startswith(VALUEERROR_PACKAGES):
        return _first_line(e)
    if isinstance(e, MemoryError):
        return ("out of memory" + (f" ({_first_line(e)})" if str(e) else "")
                + ": give a memory limit (--max-memory GB), fewer samples or a cheaper method")
    if isinstance(e, OSError):  # a file the user named: missing, a folder, no permission, disk full
        what = e.strerror or _first_line(e)
        name = f"{e.filename}: " if e.filename else ""
        return f"{name}{what}"
    return None


def report_error(e: BaseException) -> int:
    """Print the one line for ``e`` on stderr and return the exit code."""
    msg = user_error_message(e)
    if msg is not None:
        click.echo(f"error: {msg}", err=True)
        return EXIT_USER
    click.echo(f"error: internal error {type(e).__name__}: {_first_line(e)} -- this is a bug in onnxverify; "
               "please report it with the command line and the output of `onnxverify --debug ...`", err=True)
    return EXIT_INTERNAL


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug", False))


def friendly_errors(fn):
    """Apply the error policy to a command (one line + exit code; ``--debug`` re-raises)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            if _debug():
                raise
            sys.exit(report_error(e))

    return wrapper


class CliGroup(click.Group):
    """The root group: click's own errors (unknown option, bad value, missing argument) follow
    the same policy as the commands' — one ``error:`` line naming the ``--help`` to read, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            path = e.ctx.command_path if e.ctx is not None else (prog_name or "onnxverify")
            click.echo(f"error: {_lower_first(e.format_message())} (see `{path} --help`)", err=True)
            sys.exit(EXIT_USER)
        except click.ClickException as e:
            click.echo(f"error: {_lower_first(e.format_message())}", err=True)
            sys.exit(EXIT_USER)
        except click.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(EXIT_INTERRUPT)
        sys.exit(rv if isinstance(rv, int) else 0)


def _lower_first(text: str) -> str:
    text = " ".join(str(text).split())
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def check_backend(name: str):
    """Fail before any work if ``--backend`` is unknown or not installed (one line, exit 2)."""
    from ..backend import get_backend

    return get_backend(name)


def check_plot_dependency(path):
    """Fail before any work if ``--plot`` is given and matplotlib is missing."""
    if not path:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OnnxVerifyError("--plot needs matplotlib: pip install matplotlib (or 'onnxverify[plot]')") from None


def check_eps(eps, name="--eps"):
    """Refuse a negative or non-finite radius before any work."""
    from ..errors import InputError

    if eps is not None and not (np.isfinite(eps) and eps >= 0):
        raise InputError(f"{name} must be a finite number >= 0, got {eps}")
    return eps


def check_memory(max_memory):
    """``--max-memory GB`` as bytes (None: the engine's default); refuses values <= 0."""
    from ..errors import InputError

    if max_memory is None:
        return None
    if not np.isfinite(max_memory) or max_memory <= 0:
        raise InputError(f"--max-memory must be a positive number of GB, got {max_memory}")
    return int(min(max_memory * 2**30, 2**62))  # beyond 4 EiB: no limit in practice


def load_network(path):
    from .. import load

    return load(path)


def bounded_part(net):
    """The network whose outputs ``bounds`` / ``compare`` bound: without an index head
    (ArgMax, TopK indices, OneHot of an index), which gets one note line naming its nodes;
    a model whose outputs include indices among values gets a note naming those outputs."""
    part, nodes = net.without_index_output()
    if nodes:
        chain = " of ".join(f"node {n.source or n.name} ({n.op})" for n in nodes)
        click.echo(f"note: the output is an index ({chain}); bounds are computed for its input "
                   f"{nodes[-1].inputs[0]}, sample shape {part.output_shape}", err=True)
        return part
    for node, start, stop in net.index_output_parts():
        click.echo(f"note: outputs Y_{start}..Y_{stop - 1} are indices (node {node.source or node.name}, {node.op}): "
                   "their bounds are ranges of indices", err=True)
    return net


def load_input(path, net):
    """A ``.npy`` file as ``(batch, *net.input_shape)`` float32 (see ``Network.prepare_input``
    for the shapes accepted)."""
    from ..errors import InputError

    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"input {path} is a folder, expected a .npy file")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"cannot read {path} as a .npy array ({type(e).__name__}: {_first_line(e)[:200]}); "
                         "save it with numpy.save") from None
    if not isinstance(x, np.ndarray):  # an .npz archive
        raise InputError(f"{path} is a .npz archive; give one array saved with numpy.save")
    return net.prepare_input(x)
