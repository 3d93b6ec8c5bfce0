"""Deciding properties: the bound cascade, attacks whose counterexamples onnxruntime confirms,
input branch and bound, and deadlines. :func:`verify` is the entry point."""
from .cascade import DEFAULT_CASCADE, VERDICTS, Result, parse_methods, verify

__all__ = ["DEFAULT_CASCADE", "Result", "VERDICTS", "parse_methods", "verify"]
