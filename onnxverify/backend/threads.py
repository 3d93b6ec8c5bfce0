"""One thread policy for the array libraries the verifier drives (NumPy's BLAS and torch).

Two thread pools that busy-wait for work (OpenBLAS's and torch's OpenMP pool) fight over the
cores when calls alternate between them: on a 2-core machine a CROWN pass took 15-18 s
instead of 3 s that way. The policy: **at any time one pool does the parallel work**, with
``n`` threads:

* while torch is not in use, NumPy's BLAS gets ``n`` threads (torch is never imported for
  this: a pure MLP verifies without it);
* once torch is in use (the NumPy backend convolves with torch's kernels, or the torch
  backend runs), torch gets ``n`` threads and BLAS one: the NumPy backend then sends its
  large products through torch as well (zero-copy), so the parallel work stays in torch's
  pool.

``n`` is fixed when you say so: :func:`configure` (``onnxverify --threads N``) or
``$ONNXVERIFY_THREADS``. Otherwise it adapts, like OpenMP's ``OMP_DYNAMIC``: up to
``$OMP_NUM_THREADS`` (what ``onnxverify run`` sets for each of its workers: cores / workers)
or the cores this process may run on, but no more than the cores the 1-minute load average
leaves idle (our own thread counted), re-read at each bound computation. Busy-waiting pools
on cores that other processes hold are what makes oversubscription so costly: on a shared
2-core machine at load 6, torch with 2 threads took 20-50x longer than with 1 on a small
conv net, and 2-4x longer on a large one.

BLAS is limited with threadpoolctl (a dependency: it is the one portable way to change
OpenBLAS/MKL/BLIS thread counts after NumPy is loaded); without it the environment
variables above still apply to BLAS at start-up.
"""
from __future__ import annotations

import os
import sys

__all__ = ["apply", "configure", "current", "default_threads", "effective_threads", "threads", "torch_in_use",
           "use_torch"]

#: ``blas``/``torch``: the counts applied to each pool (None: left as the library set it)
_STATE = {"n": None, "explicit": False, "blas": None, "torch": None, "torch_in_use": False, "limiter": None,
          "now": None}


def default_threads() -> int:
    """``$ONNXVERIFY_THREADS``, else ``$OMP_NUM_THREADS``, else the usable cores."""
    for var in ("ONNXVERIFY_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads() -> int:
    """The most threads the policy gives the pool that does the work."""
    if _STATE["n"] is None:
        _STATE["n"] = default_threads()
    return _STATE["n"]


def fixed() -> bool:
    """True when the count was given (``configure`` or ``$ONNXVERIFY_THREADS``): no adapting."""
    return _STATE["explicit"] or os.environ.get("ONNXVERIFY_THREADS", "").strip().isdigit()


def effective_threads() -> int:
    """The threads to use now: :func:`threads`, or when not fixed, no more than the idle cores."""
    n = threads()
    if n == 1 or fixed():
        return n
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return n
    idle = cores - load + 1.0  # the load counts this process's own running thread
    return max(1, min(n, int(idle + 0.5)))


def configure(n: int | None = None) -> int:
    """Use exactly ``n`` threads from now on (None: back to the adaptive default) and apply
    the policy; returns the count. Worker processes call it with their share of the cores."""
    if n is not None and int(n) < 1:
        from ..errors import InputError

        raise InputError(f"threads must be >= 1, got {n}")
    _STATE.update(n=default_threads() if n is None else int(n), explicit=n is not None, torch=None)
    apply()
    n = _STATE["n"]
    return n


def current() -> int:
    """The thread count the last :func:`apply` chose (what our own blocked NumPy kernels use,
    :mod:`.blocked`: they run between the pools' calls, never beside them)."""
    if _STATE["now"] is None:
        apply()
    return _STATE["now"]


def torch_in_use() -> bool:
    return _STATE["torch_in_use"]


def use_torch():
    """Called when this process starts computing with torch: the policy moves the parallel
    work to torch's pool (see the module docstring)."""
    if not _STATE["torch_in_use"]:
        _STATE["torch_in_use"] = True
        apply()


def apply():
    """Set the pools' thread counts for the current state (cheap when nothing changes)."""
    n = effective_threads()
    _STATE["now"] = n
    blas = 1 if _STATE["torch_in_use"] else n
    # BLAS already starts with threads() threads (it reads the same variables) unless told otherwise
    untouched = _STATE["blas"] is None and blas == threads() and not fixed()
    if _STATE["blas"] != blas and not untouched:
        _limit_blas(blas)
        _STATE["blas"] = blas
    torch = sys.modules.get("torch")
    if torch is not None and _STATE["torch_in_use"] and _STATE["torch"] != n:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        _STATE["torch"] = n


def _limit_blas(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the start-up environment variables still hold
        return
    # a global limit (kept until changed): threadpoolctl re-reads the loaded libraries
    _STATE["limiter"] = threadpool_limits(limits=n, user_api="blas")
