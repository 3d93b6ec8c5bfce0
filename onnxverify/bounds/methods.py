"""The bound methods: their names (one parser for every command), and their compositions of
the linear machinery (PAPER_NOTES.md §2).

| method            | intermediate bounds                       | output bounds                     |
|-------------------|-------------------------------------------|-----------------------------------|
| ibp               | intervals                                 | intervals (spec folded into tail) |
| lbp               | forward maps (LBP)                        | backward, 1 layer, then maps      |
| crown-ibp         | IBP                                       | full backward pass                |
| crown-lbp         | forward maps (LBP)                        | full backward pass                |
| crown             | full backward pass per bound node         | full backward pass                |
| relaxed-crown-V   | backward V layers, then forward maps      | backward V layers, then maps      |
| alpha-crown       | CROWN passes with optimised lines         | full pass with optimised lines    |

``alpha-crown`` (:mod:`.optimized`) optimises the free bounding lines by gradient ascent on
the torch backend (torch required); it starts from the strategy's lines, so it is never
looser than ``crown``.

Intermediate bounds are intersected with IBP (always sound, never looser). Backward passes
are chunked over rows so that peak memory stays under ``max_memory`` bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError, MemoryLimitError
from ..ops import DEFAULT_STRATEGY, STRATEGIES
from .engine import LinearEngine
from .passes import backward_undecided, chunked_backward, default_max_memory, gb, itemsize
from .plan import exact_by_ibp, plan_of

METHODS = ("ibp", "lbp", "crown-ibp", "crown-lbp", "crown", "relaxed-crown-V", "alpha-crown")

__all__ = ["METHODS", "STRATEGIES", "DEFAULT_STRATEGY", "MethodSpec", "parse_method", "parse_method_list",
           "intermediate_bounds", "run_linear_method", "exact_by_ibp"]


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name. ``intermediate``: how intermediate bounds are computed (``ibp``,
    ``lbp``, ``crown``, ``relaxed``, ``alpha``: optimised lines); ``out_depth``: nonlinear layers the output pass crosses
    before substituting forward maps (None: to the input); ``v``: the same for the
    intermediate passes of ``relaxed-crown-V``."""

    name: str
    intermediate: str
    out_depth: int | None = None
    v: int | None = None

    @property
    def linear(self) -> bool:
        return self.name != "ibp"

    @property
    def uses_forward_maps(self) -> bool:
        """Built on forward maps ``(B, n0, *shape)``, whose cost grows with the input size."""
        return self.intermediate in ("lbp", "relaxed")


def parse_method(method: str) -> MethodSpec:
    """``"crown"``, ``"relaxed-crown-2"``, ... -> :class:`MethodSpec`; an unknown name raises
    :class:`~onnxverify.errors.InputError` that lists the valid ones."""
    m = str(method).strip().lower()
    table = {"ibp": ("ibp", None), "lbp": ("lbp", 1), "crown-ibp": ("ibp", None), "crown-lbp": ("lbp", None),
             "crown": ("crown", None), "alpha-crown": ("alpha", None)}
    if m in table:
        return MethodSpec(m, *table[m])
    if m.startswith("relaxed-crown-"):
        tail = m.rsplit("-", 1)[1]
        if not tail.isdigit() or int(tail) < 1:
            raise InputError(f"method {method!r}: V must be an integer >= 1 (e.g. relaxed-crown-2)")
        return MethodSpec(m, "relaxed", int(tail), int(tail))
    raise InputError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")


def parse_method_list(spec) -> list:
    """``"ibp,crown:adaptive"`` (or a list of names / ``(method, strategy)`` pairs) ->
    ``[(method, strategy or None)]``, every method and strategy checked; the error names the
    entry that is wrong and what would be right."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for it in items:
        if isinstance(it, (tuple, list)):
            m, s = it
        else:
            m, _, s = str(it).strip().partition(":")
        m, s = m.strip().lower(), (s.strip().lower() if s else None) or None
        if not m:
            continue
        parse_method(m)
        if s is not None and s not in STRATEGIES:
            raise InputError(f"unknown strategy {s!r} in {it!r}: choose one of {', '.join(STRATEGIES)} "
                             f"(e.g. {m}:adaptive)")
        out.append((m, s))
    if not out:
        raise InputError(f"no bound methods in {spec!r}: give e.g. ibp,crown:adaptive")
    return out


def intermediate_bounds(graph, input_set, method, strategy, bk, dtype, ibp_env, max_memory=None,
                        stop_after: str | None = None) -> LinearEngine:
    """The engine after the intermediate-bound phase of ``method``: ``eng.best(name)``
    holds the bounds of every node that feeds a nonlinear node (``eng.relax`` their lines).
    ``stop_after``: stop once this node is done (the output pass is then not possible)."""
    spec = parse_method(method)
    max_memory = max_memory or default_max_memory()
    eng = LinearEngine(graph, input_set, bk, dtype, strategy, ibp_env)
    eng.max_memory, eng.itemsize, eng.out_depth = max_memory, itemsize(dtype), spec.out_depth
    needs = set(plan_of(graph).bound_nodes)
    if spec.uses_forward_maps:
        biggest = max(n.size for n in graph.nodes)
        need = eng.B * eng.n0 * biggest * eng.itemsize * 6
        if need > max_memory:
            raise MemoryLimitError(
                f"{method}: forward linear maps need about {gb(need)} ({eng.B} x {eng.n0} x {biggest} values, "
                f"with temporaries) but the memory limit is {gb(max_memory)}; use crown-ibp or crown, "
                "fewer images at once, or raise --max-memory")
        eng.input_maps()
    plan = eng.plan
    keep_maps = set(needs) if spec.intermediate == "relaxed" else plan.cut_nodes(needs, spec.out_depth)
    exact = plan.exact
    consumers_left = dict(plan.consumer_counts)
    passes = spec.intermediate in ("crown", "relaxed", "alpha")  # alpha: CROWN's, before optimisation
    for node in graph.computed:
        rule = plan.rules[node.name]
        if not rule.affine:
            eng.relax_node(node.name)  # its inputs' bounds are final by now
        if spec.uses_forward_maps:
            eng.forward_maps(node.name)
            for i in node.inputs:
                consumers_left[i] -= 1
                if consumers_left[i] == 0 and i not in keep_maps:
                    eng.maps.pop(i, None)
        if node.name in needs:
            # re-run the interval rule from the tightened input bounds (cheap, sound, often
            # tighter; with IBP intermediate bounds nothing was tightened: it would repeat IBP)
            if spec.intermediate != "ibp":
                eng.tighten(node.name, *rule.interval(bk, node, *[eng.best(i) for i in node.inputs]))
            if spec.uses_forward_maps:
                eng.tighten(node.name, *eng.concretize_maps(node.name))
            # a monotone op's output is as tight as its inputs' bounds allow, and IBP bounds
            # some prefix nodes exactly: neither needs backward passes
            if passes and not rule.monotone and node.name not in exact:
                backward_undecided(eng, node.name, spec.v, max_memory, eng.itemsize)
        if node.name == stop_after:
            break
    return eng


def run_linear_method(graph, input_set, method, C, strategy, bk, dtype, ibp_env, max_memory=None):
    """Output bounds ``(B, K)`` of ``C @ y`` (C ``(B, K, n_out)``) by a linear method."""
    if parse_method(method).intermediate == "alpha":
        from .optimized import alpha_crown

        res = alpha_crown(graph, input_set, C, strategy, dtype=dtype, max_memory=max_memory)
        return bk.asarray(res.lower, dtype=dtype), bk.asarray(res.upper, dtype=dtype)
    eng = intermediate_bounds(graph, input_set, method, strategy, bk, dtype, ibp_env, max_memory)
    out = graph[graph.output]
    lam = bk.reshape(bk.asarray(C, dtype=dtype), (eng.B, C.shape[1]) + tuple(out.shape))
    return chunked_backward(eng, graph.output, lam, eng.out_depth, eng.max_memory, eng.itemsize)
