"""Op-agnostic bound engines: intervals (:mod:`.ibp`), forward maps (:mod:`.engine`), backward
passes (:mod:`.backward`, :mod:`.passes`), their compositions (:mod:`.methods`), and neuron
statuses (:mod:`.status`). :func:`compute_bounds` is the one entry point.

Every method returns output bounds of ``C y`` (``(batch, K)``) when a spec ``C`` is
given, else of the output itself (``(batch, *output_shape)``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import get_backend
from ..ir import Graph
from ..ops import DEFAULT_STRATEGY, STRATEGIES, check_strategy
from ..specs.input_sets import InputSet
from ..specs.output import apply_spec_to_interval, check_spec
from .affine_maps import affine_tail, spec_through_tail
from .engine import intersect
from .ibp import interval_bounds
from .methods import METHODS, MethodSpec, parse_method, parse_method_list, run_linear_method

__all__ = ["Bounds", "DEFAULT_STRATEGY", "METHODS", "MethodSpec", "STRATEGIES", "compute_bounds",
           "fold_spec_interval", "interval_bounds", "parse_method", "parse_method_list"]


@dataclass
class Bounds:
    """``lower``/``upper``: ``(batch, K)`` with a spec, else ``(batch, *output_shape)``."""

    lower: object
    upper: object
    method: str
    time_s: float = 0.0
    strategy: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def width(self):
        return self.upper - self.lower


def fold_spec_interval(bk, graph: Graph, env: dict, C, dtype):
    """Bounds of ``C y`` from node intervals ``env``, with ``C`` folded into the affine tail.

    ``C``: ``(B, K, n_out)``. Folds ``C`` through the affine tail (by its adjoints) when
    the output is affine in a single node, else interval arithmetic on the output bounds.
    """
    entry, names = affine_tail(graph)
    out_lo, out_hi = env[graph.output]
    B = out_lo.shape[0]
    if names:
        M, off = spec_through_tail(bk, graph, entry, names, bk.asarray(C, dtype=np.float64))
        lo, hi = env[entry]
        lo = bk.asarray(bk.reshape(lo, (B, -1)), dtype=np.float64)
        hi = bk.asarray(bk.reshape(hi, (B, -1)), dtype=np.float64)
        l_, u_ = apply_spec_to_interval(bk, M, lo, hi)
        return bk.asarray(l_ + off, dtype=dtype), bk.asarray(u_ + off, dtype=dtype)
    return apply_spec_to_interval(bk, bk.asarray(C, dtype=dtype), bk.reshape(out_lo, (B, -1)), bk.reshape(out_hi, (B, -1)))


def compute_bounds(graph: Graph, input_set: InputSet, method: str = "ibp", spec=None, strategy: str | None = None,
                   backend=None, dtype=np.float32, max_memory: int | None = None, intersect_ibp: bool = True) -> Bounds:
    """Sound bounds on the network output (or on ``spec @ output``) over ``input_set``.

    ``method``: one of :data:`METHODS` (``relaxed-crown-V`` with an integer V >= 1).
    ``strategy``: bounding lines of the linear methods (default ``adaptive``).
    ``intersect_ibp``: also intersect the output bounds with IBP's (never looser; on by
    default, off to study a method on its own).
    """
    method = parse_method(method).name
    if strategy is not None:
        check_strategy(strategy)
    bk = get_backend(backend)
    input_set = input_set.batched(graph.input_shape)
    t0 = time.perf_counter()
    env = interval_bounds(bk, graph, input_set, dtype)
    lo, hi = env[graph.output]
    B = lo.shape[0]
    n_out = graph[graph.output].size
    C = check_spec(spec, B, n_out) if spec is not None else None
    if C is not None:
        lo, hi = fold_spec_interval(bk, graph, env, C, dtype)
    if method == "ibp":
        return Bounds(lo, hi, method, time.perf_counter() - t0, None)
    strategy = strategy or DEFAULT_STRATEGY
    rows = C if C is not None else np.broadcast_to(np.eye(n_out), (B, n_out, n_out))
    l_lin, u_lin = run_linear_method(graph, input_set, method, np.ascontiguousarray(rows), strategy, bk, dtype, env, max_memory)
    if C is None:
        shape = (B,) + tuple(graph.output_shape)
        l_lin, u_lin = bk.reshape(l_lin, shape), bk.reshape(u_lin, shape)
    if intersect_ibp:
        l_lin, u_lin = intersect(bk, (l_lin, u_lin), (lo, hi))
    return Bounds(l_lin, u_lin, method, time.perf_counter() - t0, strategy)
