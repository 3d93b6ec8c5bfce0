"""What every command shares: one error policy, loading a model and an input, the bundled example."""
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


def friendly_errors(fn):
    """Print one-line errors instead of tracebacks (unless --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (OnnxVerifyError, OSError, ValueError, MemoryError) as e:
            if debug:
                raise
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            click.echo(f"error: {msg}", err=True)
            sys.exit(2)
        except Exception as e:  # an internal bug: still one line, with a hint
            if debug:
                raise
            click.echo(f"error: internal {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                       "(rerun with --debug for the traceback)", err=True)
            sys.exit(3)

    return wrapper


def load_network(path):
    from .. import load

    return load(path)


def load_input(path, net):
    from ..errors import InputError

    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"cannot read {path} as a .npy array ({type(e).__name__})") from None
    return net.prepare_input(x)
