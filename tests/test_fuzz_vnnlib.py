"""Fuzzing VNN-LIB: real property files, mutated token by token, through the parser and
through ``onnxverify verify``.

Seeds: ACAS Xu, cartpole and vdp properties from ../shared/benchmarks (when present) and a
robustness property for the bundled digits MLP (always). Mutations: token deletions and
duplications, swapped operators, absurd numbers (1e999, nan, huge integers) and variable
names (X_99999999, Y_-1), absurd sizes (a thousand-fold repeated assert, deep nesting, wide
disjunctions), stray parentheses, junk lines, gzip, truncation.

Contracts:
* the parser returns a well-formed :class:`Property` (finite, ordered boxes of the declared
  size; rows of the declared width) or raises one-line :class:`VnnlibError` — never another
  exception, and within a time limit;
* ``verify`` ends in time with exit 2 and one ``error:`` line, or a verdict that is right:
  ``sat`` with a counterexample that onnxruntime confirms, ``unsat`` with no sampled point of
  the boxes in the unsafe set, or ``unknown`` / ``timeout``.
"""
from __future__ import annotations

import gzip
import os
import re
import signal
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import BENCH, fuzz_settings
from fuzz_worker import Case, judge
from onnxverify.specs.vnnlib import Property, VnnlibError, is_violated, parse_vnnlib, parse_vnnlib_string

DATA = os.path.join(os.path.dirname(__file__), "..", "onnxverify", "data")
BENCH_PAIRS = [("acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx", f"acasxu/vnnlib/prop_{k}.vnnlib") for k in (1, 2, 3, 4)] \
    + [("rl_benchmarks/onnx/cartpole.onnx", "rl_benchmarks/vnnlib/cartpole_case_safe_14.vnnlib"),
       ("rl_benchmarks/onnx/cartpole.onnx", "rl_benchmarks/vnnlib/cartpole_case_unsafe_0.vnnlib"),
       ("reach_prob_density/onnx/vdp.onnx", "reach_prob_density/vnnlib/vdp_0.vnnlib")]
_TOKEN_RE = re.compile(r";[^\n]*|[()]|[^\s();]+")
MAX_GROWTH = 2_000_000  # characters a repetition may add (a text of ~100 MB just takes long to read)


def digits_property(eps=0.02) -> str:
    """Robustness of the bundled digits MLP around its sample: unsafe if any y_j >= y_label."""
    x = np.load(os.path.join(DATA, "digits_x0.npy")).ravel()
    label = int(open(os.path.join(DATA, "digits_x0_label.txt")).read())
    lines = [f"(declare-const X_{i} Real)" for i in range(x.size)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, v in enumerate(x):
        lines += [f"(assert (>= X_{i} {max(0.0, v - eps):.6f}))", f"(assert (<= X_{i} {min(1.0, v + eps):.6f}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10) if j != label) + "))")
    return "\n".join(lines) + "\n"


def _pairs():
    """[(name, model path, property text)]."""
    out = [("digits", os.path.join(DATA, "digits_mlp.onnx"), digits_property())]
    for model, prop in BENCH_PAIRS:
        if (BENCH / model).is_file() and (BENCH / prop).is_file():
            out.append((os.path.basename(prop), str(BENCH / model), (BENCH / prop).read_text()))
    return out


PAIRS = _pairs()
OPERATORS = ["<=", ">=", "<", ">", "=", "and", "or", "assert", "declare-const", "+", "-", "*", "/", "Real",
             "declare-fun", "check-sat", "not", "=>", "ite", "let"]
NUMBERS = ["1e308", "-1e308", "1e999", "-1e999", "nan", "inf", "-inf", "-0", "0x10", "1e-400", "1.2.3", ".", "-",
           "123456789012345678901234567890", "1/2", "+5", "1e", "0", "1e30", "-1e30"]
NAMES = ["X_99999999", "Y_99999999", "X_-1", "Y_-1", "X_0.5", "X_", "x_0", "Y_1e9", "X_00", "Z_0", "X_0X_1",
         "X_18446744073709551617"]


def _mutate(draw, text: str, kind: str) -> str:
    toks = _TOKEN_RE.findall(text)
    pick = lambda: draw(st.integers(0, max(0, len(toks) - 1)))  # noqa: E731
    if kind == "delete" and toks:
        i = pick()
        toks = toks[:i] + toks[i + draw(st.integers(1, 3)):]
    elif kind == "duplicate" and toks:
        i = pick()
        toks = toks[:i] + [toks[i]] * draw(st.integers(2, 4)) + toks[i + 1:]
    elif kind == "swap_op":
        ops = [i for i, t in enumerate(toks) if t in OPERATORS]
        if ops:
            toks[ops[draw(st.integers(0, len(ops) - 1))]] = draw(st.sampled_from(OPERATORS))
    elif kind == "number":
        nums = [i for i, t in enumerate(toks) if re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", t)]
        if nums:
            toks[nums[draw(st.integers(0, len(nums) - 1))]] = draw(st.sampled_from(NUMBERS))
    elif kind == "name":
        names = [i for i, t in enumerate(toks) if re.fullmatch(r"[XY]_\d+", t)]
        if names:
            toks[names[draw(st.integers(0, len(names) - 1))]] = draw(st.sampled_from(NAMES))
    elif kind == "xy_swap":
        names = [i for i, t in enumerate(toks) if re.fullmatch(r"[XY]_\d+", t)]
        if names:
            i = names[draw(st.integers(0, len(names) - 1))]
            toks[i] = ("Y" if toks[i][0] == "X" else "X") + toks[i][1:]
    elif kind == "repeat_assert":
        m = list(re.finditer(r"\(assert [^\n]*\)", text))
        if m:
            a = m[draw(st.integers(0, len(m) - 1))].group()
            n = min(draw(st.sampled_from([2, 100, 3000])), MAX_GROWTH // (len(a) + 1))  # absurd, not 100 MB
            return text + (a + "\n") * max(n, 1)
    elif kind == "nest":
        depth = draw(st.sampled_from([3, 100, 5000]))
        op = draw(st.sampled_from(["and", "or"]))
        return text + "(assert " + f"({op} " * depth + "(<= Y_0 0)" + ")" * depth + ")\n"
    elif kind == "wide_or":
        n = draw(st.sampled_from([2, 50, 400]))
        ors = " ".join(f"(and (<= X_0 {k}) (>= X_0 {k - 1}))" for k in range(n))
        return text + f"(assert (or {ors}))\n" * draw(st.sampled_from([1, 2, 3]))
    elif kind == "paren" and toks:
        i = pick()
        toks.insert(i, draw(st.sampled_from(["(", ")", "((", "))", "()"])))
    elif kind == "junk":
        return text + draw(st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=40)) + "\n"
    elif kind == "truncate":
        return text[:draw(st.integers(0, len(text)))]
    elif kind == "multi":
        for _ in range(draw(st.integers(2, 4))):
            text = _mutate(draw, text, draw(st.sampled_from(KINDS[:-1])))
        return text
    return _detok(toks)


def _detok(toks) -> str:
    out, line = [], []
    for t in toks:
        if t.startswith(";"):
            out.append(" ".join(line) + " " + t)
            line = []
        else:
            line.append(t)
            if t == ")" and len(line) > 12:
                out.append(" ".join(line))
                line = []
    out.append(" ".join(line))
    return "\n".join(out) + "\n"


KINDS = ["delete", "duplicate", "swap_op", "number", "name", "repeat_assert", "nest", "wide_or", "paren", "junk",
         "truncate", "xy_swap", "multi"]
#: mutations that mostly keep a property parseable, so that verify() runs on it
SEMANTIC = ["swap_op", "number", "repeat_assert", "wide_or", "nest", "xy_swap", "duplicate"]


@st.composite
def mutated_properties(draw, kinds=tuple(KINDS)):
    k = draw(st.integers(0, len(PAIRS) - 1))
    name, model, text = PAIRS[k]
    kind = draw(st.sampled_from(list(kinds)))
    return Case(f"{name}: {kind}", pair=k, model=model, text=_mutate(draw, text, kind))


@contextmanager
def time_limit(seconds):
    """SIGALRM: the parser is pure Python, so a hang is interrupted (main thread only)."""
    def fire(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_well_formed(p: Property):
    assert isinstance(p.n_inputs, int) and isinstance(p.n_outputs, int) and p.n_inputs >= 0 and p.n_outputs >= 0
    for c in p.cases:
        assert c.x_lower.shape == c.x_upper.shape == (p.n_inputs,)
        assert np.isfinite(c.x_lower).all() and np.isfinite(c.x_upper).all()
        assert (c.x_lower <= c.x_upper).all()
        for A, b in c.y_disjuncts:
            assert A.ndim == 2 and A.shape[1] == p.n_outputs and b.shape == (A.shape[0],)
            assert np.isfinite(A).all() and np.isfinite(b).all()


@given(case=mutated_properties(), gz=st.booleans())
@fuzz_settings(150)
def test_fuzz_parser(case, gz, tmp_path_factory):
    """Mutated text: a well-formed Property or one VnnlibError line, within 20 s."""
    path = tmp_path_factory.mktemp("v") / ("p.vnnlib.gz" if gz else "p.vnnlib")
    data = case.text.encode("utf-8", errors="surrogatepass")
    path.write_bytes(gzip.compress(data) if gz else data)
    with time_limit(20):
        try:
            p = parse_vnnlib(str(path))
        except VnnlibError as e:
            msg = str(e)
            assert msg and "\n" not in msg and msg.startswith(str(path)), msg
            return
    assert_well_formed(p)
    again = parse_vnnlib_string(case.text)  # the same answer from the text
    assert (again.n_inputs, again.n_outputs, len(again.cases)) == (p.n_inputs, p.n_outputs, len(p.cases))


def _ort(model):
    from onnxverify.onnx.reference import OrtModel

    return OrtModel(model)


def _check_verdict(case, prop_path, result_path, model):
    """An ok(out) for judge(): the printed verdict is right (see the module docstring)."""
    def ok(out):
        verdict = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
        assert verdict in ("sat", "unsat", "unknown", "timeout"), f"verdict {verdict!r}"
        lines = open(result_path).read().split("\n") if os.path.exists(result_path) else []
        assert lines and lines[0].strip() == verdict, f"result file {lines[:1]} vs printed {verdict}"
        p = parse_vnnlib(str(prop_path))
        ort = _ort(model)
        shape = tuple(d if isinstance(d, int) else 1 for d in ort.session.get_inputs()[0].shape[1:])
        if verdict == "sat":
            vals = dict(re.findall(r"\(([XY]_\d+) ([^)\s]+)\)", open(result_path).read()))
            x = np.array([float(vals[f"X_{i}"]) for i in range(p.n_inputs)])
            y = np.asarray(ort(x.astype(np.float32).reshape((1,) + shape)), dtype=np.float64).ravel()
            assert is_violated(p, x, y, tol=1e-6), "the counterexample does not replay in onnxruntime"
        elif verdict == "unsat":
            rng = np.random.default_rng(0)
            for c in p.cases:
                xs = rng.uniform(c.x_lower, c.x_upper, (256, p.n_inputs))
                xs = np.concatenate([xs, c.x_lower[None], c.x_upper[None]])
                ys = np.asarray(ort(xs.astype(np.float32).reshape((len(xs),) + shape)), dtype=np.float64)
                ys = ys.reshape(len(xs), -1)
                for x, y in zip(xs, ys):
                    assert not is_violated(c, x.astype(np.float32).astype(np.float64), y), \
                        "unsat, but a sampled point is in the unsafe set"
    return ok


@given(case=mutated_properties(SEMANTIC), timeout=st.sampled_from([0.5, 1.0]))
@fuzz_settings(12)
def test_fuzz_verify(case, timeout, cli_worker, tmp_path_factory):
    """``verify`` on a mutated property: one error line, or a right verdict, in time."""
    tmp = tmp_path_factory.mktemp("vv")
    prop, res = tmp / "p.vnnlib", tmp / "r.txt"
    prop.write_bytes(case.text.encode("utf-8", errors="surrogatepass"))
    args = ["verify", case.model, prop, "--timeout", timeout, "--result", res]
    judge(cli_worker, args, cli_worker.run(args, timeout + 30), _check_verdict(case, prop, res, case.model),
          timeout + 30, repr(case))
