"""A strict, versioned registry of op rules and of the ONNX converters on them.

* IR rules are filed by op name (``rule("Relu")``); registering a name twice raises.
* Converters are filed by ``(domain, op_type, since_version)``; registering the same key
  twice raises. :meth:`Registry.converter` resolves a model's opset version to the converter
  with the largest ``since <= opset`` (``""`` and ``"ai.onnx"`` are the same domain).

Rules register with the :func:`register` class decorator; their converter methods are marked
with :func:`onnxverify.ops.base.onnx_op`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import OpRule

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _domain(d: str) -> str:
    return "" if d in _DEFAULT_DOMAINS else d


@dataclass(frozen=True)
class Converter:
    """One registered converter: ``fn(ctx, node, attrs, label)`` for ``op_type`` at opset
    ``since`` and later (until the next registered version), owned by rule ``rule``."""

    domain: str
    op_type: str
    since: int
    fn: object
    rule: OpRule
    examples: tuple
    yields_constant: bool

    def until(self, registry: "Registry"):
        """The first opset version this converter no longer covers (None: open-ended)."""
        later = [c.since for c in registry.converters_for(self.domain, self.op_type) if c.since > self.since]
        return min(later) if later else None


class Registry:
    def __init__(self):
        self._rules: dict = {}
        self._converters: dict = {}  # (domain, op_type) -> {since: Converter}

    # -- registration -----------------------------------------------------------------------------
    def add_rule(self, rule: OpRule):
        if not rule.op:
            raise ValueError(f"{type(rule).__name__} has no op name")
        if rule.op in self._rules:
            raise ValueError(f"IR op {rule.op!r} is registered twice ({type(self._rules[rule.op]).__name__} "
                             f"and {type(rule).__name__})")
        self._rules[rule.op] = rule
        seen = set()
        for name, fn in vars(type(rule)).items():  # the class's own converters, not inherited ones
            if id(fn) in seen:  # one function may be filed under several names
                continue
            seen.add(id(fn))
            for decl in getattr(fn, "_onnx_ops", ()):
                self.add_converter(decl["domain"], decl["op_type"], decl["since"], getattr(rule, name), rule,
                                   decl["examples"], decl["yields_constant"])

    def add_converter(self, domain, op_type, since, fn, rule, examples=(), yields_constant=False):
        versions = self._converters.setdefault((_domain(domain), op_type), {})
        if since in versions:
            raise ValueError(f"ONNX op {domain or 'ai.onnx'}::{op_type} version {since} is registered twice "
                             f"({type(versions[since].rule).__name__} and {type(rule).__name__})")
        versions[since] = Converter(_domain(domain), op_type, since, fn, rule, tuple(examples), yields_constant)

    # -- lookup -------------------------------------------------------------------------------------
    def rule(self, op: str) -> OpRule:
        try:
            return self._rules[op]
        except KeyError:
            raise KeyError(f"no IR rule for op {op!r}") from None

    def rules(self) -> list:
        return [self._rules[k] for k in sorted(self._rules)]

    def converter(self, domain: str, op_type: str, opset: int):
        """The converter for ``op_type`` at ``opset``, or None (unsupported there)."""
        versions = self._converters.get((_domain(domain), op_type))
        if not versions:
            return None
        usable = [v for v in versions if v <= opset]
        return versions[max(usable)] if usable else None

    def converters_for(self, domain: str, op_type: str) -> list:
        return sorted(self._converters.get((_domain(domain), op_type), {}).values(), key=lambda c: c.since)

    def converters(self) -> list:
        return [c for key in sorted(self._converters) for c in self.converters_for(*key)]

    def knows(self, domain: str, op_type: str) -> bool:
        return (_domain(domain), op_type) in self._converters


REGISTRY = Registry()


def register(cls):
    """Class decorator: instantiate the rule and file it (and its converters) in :data:`REGISTRY`."""
    REGISTRY.add_rule(cls())
    return cls


def rule_of(node) -> OpRule:
    """The rule of an IR node."""
    return REGISTRY.rule(node.op)
