"""Array backends: one small interface over NumPy, CuPy and torch (:class:`Backend`).

``get_backend(name)`` returns the shared instance for ``numpy`` (default), ``torch``,
``torch:cuda``, ``cupy`` or ``auto`` (CuPy when a GPU works, else NumPy). torch and CuPy are
imported only when asked for. The first call also sets the allocator policy (:mod:`.memory`).
"""
from __future__ import annotations

import sys

from ..errors import BackendError
from . import memory, threads
from .arrays import NUMPY, ArrayModuleBackend
from .base import Backend, window_count, window_views

__all__ = ["Backend", "BackendError", "NUMPY", "get_backend", "memory", "threads", "window_count", "window_views"]

_BACKENDS: dict = {"numpy": NUMPY}


def get_backend(name: str | Backend | None = "numpy") -> Backend:
    """``numpy`` (default), ``torch``, ``torch:cuda``, ``cupy``, or ``auto`` (cupy if a GPU works)."""
    threads.apply()
    memory.apply()
    if isinstance(name, Backend):
        return name
    name = (name or "numpy").lower()
    if name == "auto":
        try:
            return get_backend("cupy")
        except BackendError:
            return NUMPY
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name.startswith("torch"):
        try:
            _import_torch()
        except ImportError as e:
            raise BackendError("backend 'torch' needs torch: pip install 'onnxverify[train]'") from e
        device = name.split(":", 1)[1] if ":" in name else None
        from .torch_backend import TorchBackend

        _BACKENDS[name] = TorchBackend(device)
        return _BACKENDS[name]
    if name == "cupy":
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
            cupy.zeros(1)
        except Exception as e:  # ImportError, CUDARuntimeError, ...
            raise BackendError(f"backend 'cupy' is not available ({type(e).__name__}: {e}); "
                               "install onnxverify[gpu] on a machine with an NVIDIA GPU") from e
        _BACKENDS[name] = ArrayModuleBackend(cupy, "cupy")
        return _BACKENDS[name]
    raise BackendError(f"unknown backend {name!r}: choose numpy, torch, torch:cuda, cupy or auto")


def _import_torch():
    """``import torch`` that a deadline alarm cannot cut short: SIGALRM (verify's time limit)
    is held back in the main thread during the import and delivered right after. An import
    interrupted half-way leaves a partially initialised ``torch`` in ``sys.modules``, and every
    later instance of a suite worker then fails with "partially initialized module 'torch'"
    (the NumPy backend imports torch mid-run for its conv kernels)."""
    import signal
    import threading

    if sys.modules.get("torch") is not None:  # (None there means: blocked, import raises)
        return
    hold = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    if hold:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        import torch  # noqa: F401
    finally:
        if hold:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
