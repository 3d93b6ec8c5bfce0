"""Elementwise chains on NumPy in cache-sized blocks, spread over the policy's threads.

A backward step through bounding lines reads and writes its coefficients several times
(``min(A, 0)``, two products, a sum, the intercept products). NumPy runs each of those as a
separate single-threaded pass over arrays of 50-100 MB, so the step is bound by memory
traffic on one core. Done block by block (about :data:`BLOCK_BYTES` of coefficients at a
time) the temporaries stay in cache, the coefficients are read once and the result written
once, and the blocks are shared among the thread policy's threads (NumPy releases the GIL
inside its loops). Measured here on ``(1, 361, 8, 32, 14, 14)`` float32 patches (2 cores):
72 ms whole-array, 37 ms in blocks on one thread, 21 ms on two.

Three kernels: :func:`through_lines` (the ReLU-family / elementwise backward step, dense
and patch forms), :func:`split_dot` (Hölder's bound of a box) and :func:`fused` (any chain
of elementwise operations, e.g. the centre/radius form of LBP's forward maps). Only the
NumPy backend uses them; torch and CuPy run the same formulas on whole arrays
(:class:`onnxverify.backend.base.Backend`).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import threads as _threads

#: bytes of coefficients per block (a few of them fit in a core's L2 cache with temporaries)
BLOCK_BYTES = 1 << 20
#: below this many bytes of coefficients one whole-array step is cheaper than blocks
BLOCKED_MIN_BYTES = 8 << 20

_POOL: dict = {"n": 0, "pool": None}


def _pool(n: int):
    if _POOL["n"] != n:
        if _POOL["pool"] is not None:
            _POOL["pool"].shutdown(wait=False)
        _POOL.update(n=n, pool=ThreadPoolExecutor(n, thread_name_prefix="onnxverify-blocks") if n > 1 else None)
    return _POOL["pool"]


def blocks(n0: int, n1: int, unit_bytes: int) -> list:
    """Slices ``(rows of axis 0, rows of axis 1)`` covering an ``(n0, n1, ...)`` array whose
    ``[i, j]`` entries hold ``unit_bytes`` each, about :data:`BLOCK_BYTES` per block."""
    per1 = max(1, BLOCK_BYTES // max(1, unit_bytes))
    if per1 >= n1:
        per0 = max(1, per1 // n1)
        return [(slice(i, min(n0, i + per0)), slice(None)) for i in range(0, n0, per0)]
    return [(slice(i, i + 1), slice(j, min(n1, j + per1))) for i in range(n0) for j in range(0, n1, per1)]


def parts_of(n0: int, n1: int, unit_bytes: int) -> list:
    """:func:`blocks`, or the whole array as one part when it is below
    :data:`BLOCKED_MIN_BYTES`."""
    if n0 * n1 * unit_bytes < BLOCKED_MIN_BYTES:
        return [(slice(None), slice(None))]
    return blocks(n0, n1, unit_bytes)


def run(fn, parts: list):
    """``fn(part)`` for every part, on the thread policy's current count of threads."""
    n = min(len(parts), _threads.current())
    pool = _pool(n) if n > 1 else None
    if pool is None:
        for p in parts:
            fn(p)
        return
    list(pool.map(lambda i: [fn(p) for p in parts[i::n]], range(n)))


def _pick(a, s0, s1):
    """The block ``[s0, s1]`` of an array broadcast against the blocked one: an axis of
    size 1 is kept whole."""
    return a[s0 if a.shape[0] != 1 else slice(None), s1 if a.shape[1] != 1 else slice(None)]


def fused(fn, arrays: list, n_out: int):
    """``fn(*arrays)`` (a chain of elementwise operations returning ``n_out`` arrays of the
    broadcast shape of ``arrays``, each at least 2-D) computed block by block over the first
    two axes, on the policy's threads."""
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    dtype = np.result_type(*arrays)
    if len(shape) < 2:
        out = fn(*arrays)
        return tuple(out) if n_out > 1 else (out,)
    outs = [np.empty(shape, dtype=dtype) for _ in range(n_out)]
    unit = int(np.prod(shape[2:])) * dtype.itemsize

    def step(part):
        got = fn(*(_pick(a, *part) for a in arrays))
        for o, g in zip(outs, got if n_out > 1 else (got,)):
            o[part] = g

    run(step, parts_of(shape[0], shape[1], unit))
    return tuple(outs)


def _bias(A, v):
    """``sum_x A * v`` -> ``(n, g)`` for ``A (n, g, X)`` and ``v (n, 1 or g, X)``."""
    if v.shape[1] == 1:
        return np.einsum("ngx,nx->ng", A, v[:, 0])
    return np.einsum("ngx,ngx->ng", A, v)


def split_dot(A, p, n):
    """NumPy kernel of :meth:`onnxverify.backend.base.Backend.split_dot`: ``A (B, K, X)``,
    ``p, n (B, X)`` -> ``sum_x max(A, 0) p + min(A, 0) n``, ``(B, K)``."""
    B, K, X = A.shape
    out = np.zeros((B, K), dtype=np.result_type(A, p, n))

    def step(part):
        s0, s1 = part
        Ab = A[s0, s1]
        out[s0, s1] = np.einsum("bkx,bx->bk", np.maximum(Ab, 0), p[s0]) + np.einsum("bkx,bx->bk", np.minimum(Ab, 0), n[s0])

    run(step, parts_of(B, K, X * A.itemsize))
    return out


def through_lines(A, a, da, b, db):
    """NumPy kernel of :meth:`onnxverify.backend.base.Backend.through_lines` (same contract):
    ``A (N, G, X)``; ``a, da, b, db`` ``(N, 1 or G, X)``, ``b``/``db`` None for zero.
    Returns ``(A a + min(A, 0) da  (N, G, X),  sum_x A b + min(A, 0) db  (N, G))``."""
    if b is not None and not b.any():  # ReLU's lower lines pass through 0
        b = None
    N, G, X = A.shape
    dtype = np.result_type(A, a, da)
    new = np.empty((N, G, X), dtype=dtype)
    bias = np.zeros((N, G), dtype=dtype)

    def step(part):
        s0, s1 = part
        Ab, out = A[s0, s1], new[s0, s1]
        n = np.minimum(Ab, 0)
        if b is not None:
            bias[s0, s1] += _bias(Ab, _pick(b, s0, s1))
        if db is not None:
            bias[s0, s1] += _bias(n, _pick(db, s0, s1))
        n *= _pick(da, s0, s1)
        np.multiply(Ab, _pick(a, s0, s1), out=out)
        out += n

    run(step, parts_of(N, G, X * A.itemsize))
    return new, bias
