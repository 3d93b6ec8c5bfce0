"""Tests for onnxverify.vnnlib: hand-written edge cases, errors, and every real benchmark file."""
from __future__ import annotations

import csv
import functools
import gzip
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from onnxverify.specs.vnnlib import (MAX_DISJUNCTS, Case, Property, VnnlibError, is_violated,
                               parse_vnnlib, parse_vnnlib_string)

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"


def decl(n_in, n_out):
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))


def box(n_in, lo=0.0, hi=1.0):
    return "".join(f"(assert (<= X_{i} {hi}))\n(assert (>= X_{i} {lo}))\n" for i in range(n_in))


# ----------------------------------------------------------------------------- basics
def test_simple_box_and_output_orientation():
    text = decl(2, 3) + """
; comment line (with parens ( that must be ignored
(assert (<= X_0 1.0)) ; trailing comment
(assert (>= X_0 -1.0))
(assert (<= X_1 2e-1))
(assert (>= X_1 -2E-1))
(assert (>= Y_0 3.5))      ; unsafe if Y_0 >= 3.5
(assert (<= Y_1 Y_2))      ; and Y_1 <= Y_2
"""
    p = parse_vnnlib_string(text)
    assert (p.n_inputs, p.n_outputs, len(p.cases)) == (2, 3, 1)
    c = p.cases[0]
    assert isinstance(p, Property) and isinstance(c, Case)
    np.testing.assert_array_equal(c.x_lower, [-1.0, -0.2])
    np.testing.assert_array_equal(c.x_upper, [1.0, 0.2])
    assert c.x_lower.dtype == np.float64
    assert len(c.y_disjuncts) == 1
    A, b = c.y_disjuncts[0]
    assert A.shape == (2, 3) and b.shape == (2,)
    x = np.zeros(2)
    assert is_violated(p, x, [3.5, 0.0, 0.0])            # boundary is included
    assert is_violated(p, x, [4.0, -1.0, 1.0])
    assert not is_violated(p, x, [3.4, 0.0, 0.0])        # Y_0 too small
    assert not is_violated(p, x, [4.0, 1.0, 0.0])        # Y_1 > Y_2
    assert not is_violated(p, [1.5, 0.0], [4.0, 0.0, 0.0])   # x outside the box
    assert is_violated(p, [1.05, 0.0], [4.0, 0.0, 0.0], tol=0.1)
    assert is_violated(p.cases[0], x, [3.5, 0, 0])       # a Case works too


def test_strict_ops_and_constant_on_left():
    text = decl(1, 2) + """
(assert (< -0.5 X_0))        ; X_0 >= -0.5
(assert (> 0.25 X_0))        ; X_0 <= 0.25
(assert (> 3 Y_0))           ; Y_0 <= 3
(assert (<= -1e0 Y_1))       ; Y_1 >= -1
"""
    c = parse_vnnlib_string(text).cases[0]
    np.testing.assert_array_equal(c.x_lower, [-0.5])
    np.testing.assert_array_equal(c.x_upper, [0.25])
    assert is_violated(c, [0.0], [3.0, -1.0])
    assert not is_violated(c, [0.0], [3.01, 0.0])
    assert not is_violated(c, [0.0], [0.0, -1.01])


def test_numbers_scientific_and_negative_forms():
    text = decl(4, 1) + """
(assert (>= X_0 -1.5e-3)) (assert (<= X_0 +2.5E+2))
(assert (>= X_1 (- 0.5))) (assert (<= X_1 .5))
(assert (>= X_2 -0)) (assert (<= X_2 1e-300))
(assert (>= X_3 (- (- 7)))) (assert (<= X_3 (/ 15 2)))
(assert (<= Y_0 -4.))
"""
    c = parse_vnnlib_string(text).cases[0]
    np.testing.assert_array_equal(c.x_lower, [-1.5e-3, -0.5, 0.0, 7.0])
    np.testing.assert_array_equal(c.x_upper, [250.0, 0.5, 1e-300, 7.5])
    A, b = c.y_disjuncts[0]
    np.testing.assert_array_equal(A, [[1.0]])
    np.testing.assert_array_equal(b, [-4.0])


def test_linear_terms():
    text = decl(2, 3) + box(2) + """
(assert (<= (+ Y_0 (* 2 Y_1) (- 0.5)) (- Y_2 1e-1)))     ; Y0 + 2 Y1 - Y2 <= 0.4
(assert (>= (* Y_2 -3) (+ 1 1)))                         ; -3 Y2 >= 2  <=> 3 Y2 <= -2
(assert (<= (* 2 X_0) 1))                                ; X_0 <= 0.5
(assert (>= (- X_1) -0.25))                              ; X_1 <= 0.25
"""
    c = parse_vnnlib_string(text).cases[0]
    np.testing.assert_allclose(c.x_upper, [0.5, 0.25])
    A, b = c.y_disjuncts[0]
    np.testing.assert_allclose(A, [[1, 2, -1], [0, 0, 3]])
    np.testing.assert_allclose(b, [0.4, -2.0])
    y = np.array([0.0, 0.0, -1.0])           # 1 <= 0.4? no
    assert not is_violated(c, [0, 0], y)
    y = np.array([-2.0, 0.0, -1.0])          # -2 + 1 = -1 <= 0.4, -3 <= -2
    assert is_violated(c, [0, 0], y)


def test_equality_and_chain():
    text = decl(1, 3) + box(1) + "(assert (= Y_0 2))\n(assert (<= Y_1 Y_2 5))\n"
    c = parse_vnnlib_string(text).cases[0]
    assert c.y_disjuncts[0][0].shape == (4, 3)
    assert is_violated(c, [0.5], [2.0, 1.0, 5.0])
    assert not is_violated(c, [0.5], [2.1, 1.0, 5.0])
    assert not is_violated(c, [0.5], [2.0, 1.0, 5.1])
    assert not is_violated(c, [0.5], [2.0, 3.0, 2.5])


def test_no_output_constraint_gives_one_empty_disjunct():
    p = parse_vnnlib_string(decl(2, 2) + box(2))
    assert len(p.cases) == 1 and len(p.cases[0].y_disjuncts) == 1
    A, b = p.cases[0].y_disjuncts[0]
    assert A.shape == (0, 2) and b.shape == (0,)
    assert is_violated(p, [0.5, 0.5], [1e9, -1e9])
    assert not is_violated(p, [1.5, 0.5], [0, 0])


# ----------------------------------------------------------------------------- DNF shapes
def test_mnist_style_disjunction_is_one_case():
    text = decl(3, 10) + box(3) + "(assert (or\n" + "".join(
        f"    (and (>= Y_{j} Y_4))\n" for j in range(10) if j != 4) + "))\n"
    p = parse_vnnlib_string(text)
    assert len(p.cases) == 1
    assert len(p.cases[0].y_disjuncts) == 9
    assert all(A.shape == (1, 10) for A, _ in p.cases[0].y_disjuncts)
    y = np.zeros(10)
    y[4] = 1.0
    assert not is_violated(p, [0.5] * 3, y)        # label 4 strictly wins: safe
    y[7] = 1.0
    assert is_violated(p, [0.5] * 3, y)            # tie with 7: unsafe (non-strict)


def test_or_of_and_with_per_disjunct_boxes():
    # acasxu prop_6 style: boxes inside the disjunction, outputs in a separate assert,
    # plus a third disjunct repeating the first box (must be grouped with it)
    text = decl(2, 2) + """
(assert (or
    (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0))
    (and (<= X_0 3) (>= X_0 2) (<= X_1 1) (>= X_1 0))
))
(assert (or (and (<= Y_0 Y_1)) (and (>= Y_0 10))))
"""
    p = parse_vnnlib_string(text)
    assert len(p.cases) == 2
    assert [len(c.y_disjuncts) for c in p.cases] == [2, 2]
    np.testing.assert_array_equal(p.cases[1].x_lower, [2, 0])
    assert is_violated(p, [2.5, 0.5], [0, 1])
    assert is_violated(p, [0.5, 0.5], [11, 1])
    assert not is_violated(p, [1.5, 0.5], [0, 1])     # between the boxes
    assert not is_violated(p, [2.5, 0.5], [5, 1])


def test_mixed_disjuncts_group_by_box():
    text = decl(1, 2) + """
(assert (or
    (and (<= X_0 1) (>= X_0 0) (<= Y_0 Y_1))
    (and (<= X_0 3) (>= X_0 2) (>= Y_0 5))
    (and (>= X_0 0) (<= X_0 1) (>= Y_1 7) (<= Y_1 8))
))
"""
    p = parse_vnnlib_string(text)
    assert len(p.cases) == 2
    first = p.cases[0]
    assert len(first.y_disjuncts) == 2 and first.y_disjuncts[1][0].shape == (2, 2)
    assert is_violated(p, [0.5], [0, 1])
    assert not is_violated(p, [2.5], [0, 1])          # second box needs Y_0 >= 5
    assert is_violated(p, [2.5], [6, 0])
    assert is_violated(p, [0.5], [9, 7.5])
    assert not is_violated(p, [0.5], [9, 8.5])


def test_top_level_and_of_ors_expands_by_product():
    text = decl(1, 3) + box(1) + """
(assert (and (or (<= Y_0 0) (<= Y_1 0)) (or (<= Y_2 0) (>= Y_2 5) (= Y_0 9))))
(assert (<= Y_0 100))
"""
    p = parse_vnnlib_string(text)
    assert len(p.cases) == 1 and len(p.cases[0].y_disjuncts) == 6
    assert all(A.shape[0] in (3, 4) for A, _ in p.cases[0].y_disjuncts)
    assert is_violated(p, [0], [1, -1, 6])
    assert not is_violated(p, [0], [1, -1, 3])
    assert is_violated(p, [0], [9, -1, 3])
    assert not is_violated(p, [0], [9, 1, 3])


def test_empty_box_cases_are_dropped():
    text = decl(1, 1) + """
(assert (or (and (<= X_0 1) (>= X_0 2)) (and (<= X_0 5) (>= X_0 4))))
(assert (<= Y_0 0))
"""
    p = parse_vnnlib_string(text)
    assert len(p.cases) == 1
    np.testing.assert_array_equal(p.cases[0].x_lower, [4])


def test_deep_nesting_does_not_recurse():
    depth = 5000
    text = decl(1, 1) + box(1) + "(assert " + "(and " * depth + "(<= Y_0 1)" + ")" * depth + ")"
    p = parse_vnnlib_string(text)
    assert is_violated(p, [0.5], [1.0]) and not is_violated(p, [0.5], [1.5])


def test_gzip_by_suffix_and_by_magic(tmp_path):
    text = decl(1, 1) + box(1) + "(assert (>= Y_0 2))\n"
    for name in ("p.vnnlib.gz", "p_gz_without_suffix.vnnlib"):
        f = tmp_path / name
        f.write_bytes(gzip.compress(text.encode()))
        p = parse_vnnlib(f)
        assert p.path == str(f) and p.n_inputs == 1
        assert is_violated(p, [0.5], [2.0])
    plain = tmp_path / "plain.vnnlib"
    plain.write_text(text)
    assert parse_vnnlib(str(plain)).n_outputs == 1
    assert parse_vnnlib(text).path is None                  # text, not a path
    assert parse_vnnlib(gzip.compress(text.encode())).n_inputs == 1


# ----------------------------------------------------------------------------- errors
def _err(text, *needles):
    with pytest.raises(VnnlibError) as info:
        parse_vnnlib_string(text)
    msg = str(info.value)
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_error_unbalanced_parens():
    _err(decl(1, 1) + "(assert (<= X_0 1)))\n", ":3:", "')'")
    _err(decl(1, 1) + "\n(assert (<= X_0 1)\n(assert (>= X_0 0))\n", ":4:", "'('", "unbalanced")


def test_error_unknown_operator_and_command():
    _err(decl(1, 1) + box(1) + "(assert (foo Y_0 1))\n", ":5:", "'foo'", "unknown operator")
    _err(decl(1, 1) + box(1) + "(frobnicate)\n", ":5:", "'frobnicate'")
    _err(decl(1, 1) + box(1) + "(assert (or (<= Y_0 1) (not (<= Y_0 0))))", ":5:", "'not'")


def test_error_structure():
    _err(decl(1, 1) + "X_0\n", ":3:", "'X_0'", "outside")
    _err(decl(1, 1) + box(1) + "(assert (and () (<= Y_0 1)))", ":5:", "empty")
    _err(decl(1, 1) + box(1) + "(assert ((<= Y_0 1)))", ":5:", "operator")
    _err(decl(1, 1) + box(1) + "(assert (+ Y_0 1))", ":5:", "formula")


def test_bom_and_crlf(tmp_path):
    f = tmp_path / "crlf.vnnlib"
    f.write_bytes(b"\xef\xbb\xbf" + (decl(1, 1) + box(1) + "(assert (<= Y_0 1))").replace(
        "\n", "\r\n").encode())
    assert parse_vnnlib(f).n_inputs == 1
    f.write_bytes(f.read_bytes() + b"\r\n(assert (<= Y_0 zz))\r\n")
    with pytest.raises(VnnlibError, match=":6:.*'zz'"):
        parse_vnnlib(f)


def test_error_not_a_number():
    _err(decl(1, 1) + "(assert (<= X_0 1.2.3))\n", ":3:", "'1.2.3'", "number")
    _err(decl(1, 1) + "(assert (<= X_0\n  abc))\n", ":4:", "'abc'")
    _err(decl(1, 1) + "(assert (<= X_0 inf))\n", ":3:", "'inf'")


def test_error_undeclared_variable():
    _err(decl(2, 1) + "(assert (<= X_0 1))\n(assert (<= X_2 1))\n", ":5:", "X_2", "undeclared")
    _err(decl(2, 1) + box(2) + "(assert (<= Y_0 Y_3))\n", ":8:", "Y_3")


def test_error_empty_file_and_no_asserts():
    _err("", "no assert")
    _err("; just a comment\n", "no assert")
    _err(decl(2, 2), "no assert")


def test_error_unsupported_input_constraints():
    _err(decl(2, 1) + box(2) + "(assert (<= X_0 X_1))\n", ":8:", "unsupported", "X_0", "X_1")
    _err(decl(1, 1) + box(1) + "(assert (<= X_0 Y_0))\n", ":5:", "unsupported")
    _err(decl(1, 1) + box(1) + "(assert (<= (* X_0 Y_0) 1))\n", ":5:", "nonlinear")


def test_error_unbounded_input():
    _err(decl(2, 1) + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n",
         "X_1", "lower")
    _err(decl(1, 1) + "(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 1))))\n",
         "X_0", "lower")


def test_error_declarations():
    _err("(declare-const X_0 Real)\n(declare-const X_2 Real)\n(assert (<= X_0 1))",
         "X_1 is not declared")
    _err("(declare-const foo Real)\n(assert (<= foo 1))", ":1:", "'foo'")
    _err("(declare-const X_0 Real)\n(declare-const X_0 Real)\n", ":2:", "twice")


def test_error_dnf_expansion_cap():
    ors = "(assert (or " + " ".join(f"(<= Y_0 {i})" for i in range(50)) + "))\n"
    _err(decl(1, 1) + box(1) + ors * 3, "DNF", str(MAX_DISJUNCTS))


def test_size_mismatch():
    text = decl(3, 2) + box(3) + "(assert (<= Y_0 Y_1))\n"
    with pytest.raises(VnnlibError, match=r"3.*5|5.*3"):
        parse_vnnlib_string(text, n_inputs=5)
    with pytest.raises(VnnlibError, match=r"2.*7|7.*2"):
        parse_vnnlib(text, n_inputs=3, n_outputs=7)
    p = parse_vnnlib(text, n_inputs=3, n_outputs=2)
    p.check_sizes(3, 2)
    with pytest.raises(VnnlibError, match="outputs"):
        p.check_sizes(3, 10)


# ----------------------------------------------------------------------------- property test
_cmp = st.sampled_from(["<=", ">=", "<", ">"])


@settings(max_examples=60, deadline=None)
@given(atoms=st.lists(st.tuples(_cmp, st.integers(0, 2), st.integers(-1, 2),
                                st.integers(-20, 20), st.booleans()), min_size=1, max_size=4),
       y=st.lists(st.integers(-10, 10), min_size=3, max_size=3))
def test_orientation_matches_direct_evaluation(atoms, y):
    """Random atoms `(op Y_j rhs)`/`(op rhs Y_j)` against a direct evaluation."""
    ops = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
           "<": lambda a, b: a <= b, ">": lambda a, b: a >= b}   # strict == non-strict
    lines, truth = [], True
    for op, j, k, const, flip in atoms:
        rhs_text, rhs_val = (f"Y_{k}", y[k]) if k >= 0 else (str(const / 4), const / 4)
        lhs_text, lhs_val = f"Y_{j}", y[j]
        if flip:
            lhs_text, rhs_text, lhs_val, rhs_val = rhs_text, lhs_text, rhs_val, lhs_val
        lines.append(f"(assert ({op} {lhs_text} {rhs_text}))")
        truth &= ops[op](lhs_val, rhs_val)
    p = parse_vnnlib_string(decl(1, 3) + box(1) + "\n".join(lines))
    assert is_violated(p, [0.5], np.array(y, float)) == truth


# ----------------------------------------------------------------------------- large input
def _synthetic(n_disj, n_atoms=10, n_out=5, seed=0):
    rng = np.random.default_rng(seed)
    out = [decl(5, n_out), box(5, -1, 1), "(assert (or\n"]
    for d in range(n_disj):
        atoms = [f"(<= (+ (* {rng.normal():.17g} Y_{j}) Y_{k}) {rng.normal():.17g})"
                 if a % 3 == 0 else f"(<= Y_{j} Y_{k})" if a % 3 == 1
                 else f"(>= Y_{j} {rng.normal():.17g})"
                 for a, (j, k) in enumerate(rng.integers(n_out, size=(n_atoms, 2)))]
        out.append("  (and " + " ".join(atoms) + ")\n")
    out.append("))\n")
    return "".join(out)


def test_large_synthetic_file(tmp_path):
    # ~1.9 MB: ~0.4 s here. _synthetic(26000) (9.9 MB, 260000 atoms) parses in ~1.5 s.
    text = _synthetic(5000)
    assert len(text) > 1.5e6
    f = tmp_path / "big.vnnlib"
    f.write_text(text)
    t0 = time.perf_counter()
    p = parse_vnnlib(f)
    print(f"parsed {len(text) / 1e6:.1f} MB in {time.perf_counter() - t0:.2f} s")
    assert len(p.cases) == 1 and len(p.cases[0].y_disjuncts) == 5000
    assert all(A.shape == (10, 5) for A, _ in p.cases[0].y_disjuncts)


# ----------------------------------------------------------------------------- real benchmarks
def _numel(value_info):
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]
    if len(dims) > 1 and dims[0] in (None, 1):             # leading batch dimension
        dims = dims[1:]
    assert all(dims), f"dynamic non-batch dimension in {value_info.name}: {dims}"
    return math.prod(dims)


@functools.lru_cache(maxsize=None)
def _onnx_sizes(path):
    import onnx
    model = onnx.load(path, load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    assert len(inputs) == 1, path
    return _numel(inputs[0]), sum(_numel(o) for o in model.graph.output)


@functools.lru_cache(maxsize=None)
def _parse_cached(path):
    return parse_vnnlib(path)


_BENCH_DIRS = sorted(p.parent for p in BENCH.glob("*/instances.csv")) if BENCH.is_dir() else []


@pytest.mark.skipif(not _BENCH_DIRS, reason="shared/benchmarks not available")
@pytest.mark.parametrize("bench", _BENCH_DIRS, ids=lambda p: p.name)
def test_benchmark_vnnlib_files(bench):
    files = sorted(f for f in (bench / "vnnlib").rglob("*") if f.is_file())
    assert files
    for f in files:                                        # every file parses
        p = _parse_cached(str(f))
        assert p.cases, f
        for c in p.cases:
            assert c.x_lower.shape == c.x_upper.shape == (p.n_inputs,)
            assert np.all(np.isfinite(c.x_lower)) and np.all(c.x_lower <= c.x_upper)
            assert all(A.shape[1] == p.n_outputs and A.shape[0] == b.shape[0]
                       for A, b in c.y_disjuncts)
    with open(bench / "instances.csv", newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    for onnx_rel, vnnlib_rel, *_ in rows:                  # sizes match the networks
        n_in, n_out = _onnx_sizes(str(bench / onnx_rel.strip()))
        _parse_cached(str(bench / vnnlib_rel.strip())).check_sizes(n_in, n_out)


@pytest.mark.skipif(not _BENCH_DIRS, reason="shared/benchmarks not available")
def test_benchmark_specific_structures():
    acas = BENCH / "acasxu" / "vnnlib"
    p6 = _parse_cached(str(acas / "prop_6.vnnlib"))
    assert len(p6.cases) == 2 and all(len(c.y_disjuncts) == 4 for c in p6.cases)
    p1 = _parse_cached(str(acas / "prop_1.vnnlib"))
    (c,) = p1.cases
    np.testing.assert_allclose(c.x_lower[0], 0.6)
    np.testing.assert_allclose(c.x_upper[0], 0.679857769)
    y = np.zeros(5)
    y[0] = 3.991125645861615
    assert is_violated(p1, c.x_lower, y) and not is_violated(p1, c.x_lower, y - 1e-6)
    mnist = _parse_cached(str(BENCH / "mnist_fc" / "vnnlib" / "prop_0_0.03.vnnlib"))
    assert len(mnist.cases) == 1 and len(mnist.cases[0].y_disjuncts) == 9
