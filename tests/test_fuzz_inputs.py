"""Fuzzing ``.npy`` inputs and the options around them, through ``onnxverify bounds``.

Arrays of every layout the models' inputs can be confused with (channels first vs last,
missing or extra unit axes, flat, batched, empty, scalar), dtypes (floats, ints, bool,
complex, strings, objects, structured), values (NaN, Inf, beyond float32), corrupted or
non-.npy files, and eps / norm / clip / label / method values, valid and not.

An oracle written here from the documented rules says whether the command must accept the
case. Contract: accepted cases exit 0 with sound bounds (the onnxruntime output at the
centre, or its margins with --label, lies within them); refused ones exit 2 with one
``error:`` line; never a traceback, an internal error or a hang.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from hypothesis import given, strategies as st

import nets
from conftest import fuzz_settings
from fuzz_worker import Case, judge

DATA = os.path.join(os.path.dirname(__file__), "..", "onnxverify", "data")
LIMIT = 60.0


def _models(tmp):
    """name -> (path, sample shape, n_outputs)."""
    out = {"digits": (os.path.join(DATA, "digits_mlp.onnx"), (1, 8, 8), 10)}
    for name in ("nhwc_shape_chain", "mlp_relu", "convnet"):
        model, _ = nets.ALL_BUILDERS[name](0)
        p = tmp / f"{name}.onnx"
        onnx.save(model, p)
        import onnxverify as ov

        net = ov.load(p)
        out[name] = (str(p), net.input_shape, net.n_outputs)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _models(tmp_path_factory.mktemp("models"))


def _shape(draw, S):
    n = int(np.prod(S))
    kind = draw(st.sampled_from(["exact", "batch", "flat", "flat_batch", "permuted", "unit_added", "unit_dropped",
                                 "random", "scalar", "empty_batch"]))
    if kind == "exact":
        return S
    if kind == "batch":
        return (draw(st.integers(1, 3)),) + S
    if kind == "flat":
        return (n,)
    if kind == "flat_batch":
        return (draw(st.integers(1, 3)), n)
    if kind == "permuted":
        return tuple(draw(st.permutations(list(S))))
    if kind == "unit_added":
        i = draw(st.integers(0, len(S)))
        return S[:i] + (1,) + S[i:]
    if kind == "unit_dropped":
        return tuple(d for d in S if d != 1) or (n,)
    if kind == "scalar":
        return ()
    if kind == "empty_batch":
        return (0,) + S
    return tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=4)))


def _accepted_shape(shape, S):
    n = int(np.prod(S))
    ok = shape == S or (len(shape) == len(S) + 1 and shape[1:] == S) or \
        (len(S) > 1 and len(shape) == 1 and shape[0] == n) or (len(S) > 1 and len(shape) == 2 and shape[1] == n)
    batch = 1 if shape in (S, (n,)) else (shape[0] if shape else 0)
    return ok and batch >= 1


SHAPES = {"digits": (1, 8, 8), "nhwc_shape_chain": (6, 6, 2), "mlp_relu": (1, 4, 4), "convnet": (2, 9, 9)}


@st.composite
def input_cases(draw):
    model = draw(st.sampled_from(sorted(SHAPES)))
    shape = _shape(draw, SHAPES[model])
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "int8", "uint8", "int64", "bool", "complex64",
                                  "<U3", "object", "structured"]))
    values = draw(st.sampled_from(["unit", "nan", "inf", "huge", "negative", "zero"]))
    file_kind = draw(st.sampled_from(["npy"] * 6 + ["truncated", "bitflip", "junk", "empty", "npz", "folder",
                                                    "missing"]))
    eps = draw(st.sampled_from([0.0, 0.01, 0.1, 1.0, -0.1, float("nan"), float("inf"), 1e30]))
    norm = draw(st.sampled_from(["inf", "inf", "1", "2"]))
    clip = draw(st.sampled_from([None, None, (0.0, 1.0), (0.5, 0.6), (1.0, 0.0), (-1e30, 1e30), (0.0, 0.0)]))
    label = draw(st.sampled_from([None, None, 0, 1, 2, 9, 10, -1]))
    method = draw(st.sampled_from(["ibp", "crown", "crown-lbp", "lbp", "crown-ibp"]))
    return Case(f"{model} {shape} {dtype} {values} {file_kind} eps={eps} norm={norm} clip={clip} label={label} {method}",
                model=model, dtype=dtype, values=values, file_kind=file_kind, eps=eps, norm=norm, clip=clip,
                label=label, method=method, shape=shape)


def _array(case, S):
    shape = case.shape
    rng = np.random.default_rng(0)
    a = np.asarray(rng.uniform(0.0, 1.0, shape))  # an array for shape () too
    if case.values == "nan" and a.size:
        a.flat[0] = np.nan
    elif case.values == "inf" and a.size:
        a.flat[-1] = np.inf
    elif case.values == "huge" and a.size:
        a.flat[0] = 1e300
    elif case.values == "negative":
        a = -a
    elif case.values == "zero":
        a = np.zeros(shape)
    if case.dtype == "structured":
        s = np.zeros(shape, dtype=[("a", "f4"), ("b", "f4")])
        s["a"] = a
        return s
    if case.dtype == "object":
        return np.array(a, dtype=object)  # (a 0-d float64's astype(object) is a Python float)
    with np.errstate(all="ignore"):
        return a.astype(case.dtype)


def _write(case, a, tmp):
    p = tmp / "x.npy"
    if case.file_kind == "missing":
        return tmp / "nope.npy"
    if case.file_kind == "folder":
        (tmp / "d.npy").mkdir()
        return tmp / "d.npy"
    if case.file_kind == "npz":
        np.savez(p.with_suffix(".npz"), a)
        return p.with_suffix(".npz")
    np.save(p, a, allow_pickle=True)
    data = p.read_bytes()
    rng = np.random.default_rng(len(data))
    if case.file_kind == "truncated":
        p.write_bytes(data[: int(rng.integers(0, len(data)))])
    elif case.file_kind == "bitflip":
        b = bytearray(data)
        for i in rng.integers(0, len(b), 4):
            b[i] ^= 1 << int(rng.integers(0, 8))
        p.write_bytes(bytes(b))
    elif case.file_kind == "junk":
        p.write_bytes(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    elif case.file_kind == "empty":
        p.write_bytes(b"")
    return p


def _expected_ok(case, a, S, n_out):
    """The documented rules: must this case be accepted?"""
    if case.file_kind not in ("npy",):
        return None  # a damaged file may still parse: judged by the outcome (exit 0 must then be right)
    if a.dtype.kind not in "fiu" or a.dtype.names:
        return False
    if not _accepted_shape(a.shape, S):
        return False
    with np.errstate(all="ignore"):
        x32 = a.astype(np.float32)
    if not np.isfinite(a.astype(np.float64)).all() or not np.isfinite(x32).all():
        return False
    if not (np.isfinite(case.eps) and case.eps >= 0):
        return False
    if case.clip is not None:
        if case.norm != "inf":
            return False  # --clip only applies to l_inf balls
        lo, hi = case.clip
        if lo > hi or (a.astype(np.float64) < lo - 1e-6 * max(1, abs(lo))).any() or \
                (a.astype(np.float64) > hi + 1e-6 * max(1, abs(hi))).any():
            return False
    if case.label is not None and not 0 <= case.label < n_out:
        return False
    return True


@given(case=input_cases())
@fuzz_settings(40)
def test_fuzz_npy_inputs(case, models, cli_worker, tmp_path_factory):
    from onnxverify.onnx.reference import OrtModel

    path, S, n_out = models[case.model]
    assert S == SHAPES[case.model]
    tmp = tmp_path_factory.mktemp("x")
    a = _array(case, S)
    x_path = _write(case, a, tmp)
    js = tmp / "b.json"
    args = ["bounds", path, "--input", x_path, "--eps", case.eps, "--norm", case.norm, "--method", case.method,
            "--json", js]
    if case.clip is not None:
        args += ["--clip", *case.clip]
    if case.label is not None:
        args += ["--label", case.label]
    expected = _expected_ok(case, a, S, n_out)

    def sound(out):
        assert expected is not False, "accepted, but the rules say it must be refused"
        d = json.loads(js.read_text())
        lo, hi = np.asarray(d["lower"], dtype=np.float64), np.asarray(d["upper"], dtype=np.float64)
        x = np.load(x_path, allow_pickle=False).astype(np.float32).reshape((lo.shape[0],) + S)
        y = np.asarray(OrtModel(path)(x), dtype=np.float64).reshape(lo.shape[0], -1)
        if case.label is not None:
            y = (y[:, [case.label]] - y)[:, [j for j in range(n_out) if j != case.label]]
        tol = 1e-4 * (1 + np.abs(y))
        assert (lo <= y + tol).all() and (y - tol <= hi).all(), (lo, y, hi)

    r = judge(cli_worker, args, cli_worker.run(args, LIMIT), sound, LIMIT, repr(case))
    if expected is True:
        assert r == "ok", f"{case!r}: refused, but the rules say it must be accepted"
