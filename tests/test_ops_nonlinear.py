"""Nonlinear ops and products of computed tensors on whole networks (issue 10, items 1-3).

Soundness by sampling (uniform points, corners and PGD-like points, onnxruntime as the
reference) of every method x strategy on small random networks that use the new ops: a
transformer block (MatMul of computed tensors, Softmax, LayerNormalization, residual), a
Sin/Cos/Exp net with a product of two computed tensors, and nets of the other elementwise
ops; Theorem-2 ordering with the tight strategy where it applies. The per-op contracts are
in tests/test_op_contracts.py.
"""
from __future__ import annotations

import math

import numpy as np

from onnxverify.backend import get_backend

NP = get_backend("numpy")


def test_numpy_erf_error_is_below_the_margin_the_rules_add():
    x = np.linspace(-9.0, 9.0, 200001)
    ref = np.array([math.erf(v) for v in x])
    assert np.abs(NP.erf(x) - ref).max() < 8.4e-8  # Erf.value_abs_error is 2e-7
