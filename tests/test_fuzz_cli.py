"""Fuzzing command lines: every command with valid and invalid option values mixed.

Options come from pools of good and bad values (negative, NaN, Inf and non-numeric numbers,
unknown names, out-of-range labels, paths to missing files, folders, non-ONNX files,
folders that do not exist for outputs); files are the bundled digits MLP, its sample and a
property for it. Contract: exit 0 with a sane answer (bounds contain the onnxruntime output
at the centre; lower <= upper; a verdict for ``verify``), or exit 2 with one ``error:``
line; never a traceback, an internal error or a hang.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import fuzz_settings
from fuzz_worker import Case, judge
from test_fuzz_vnnlib import digits_property

DATA = os.path.join(os.path.dirname(__file__), "..", "onnxverify", "data")
MODEL, X = os.path.join(DATA, "digits_mlp.onnx"), os.path.join(DATA, "digits_x0.npy")
LIMIT = 90.0

NUMBERS = ["0", "0.01", "0.1", "1", "-1", "nan", "inf", "-inf", "1e308", "abc", "", "1e-12"]
METHODS = ["ibp", "lbp", "crown", "crown-ibp", "crown-lbp", "relaxed-crown-1", "relaxed-crown-2", "relaxed-crown-0",
           "relaxed-crown-x", "magic", "", "IBP"]
CASCADES = ["ibp", "ibp,crown", "crown:tight", "crown:bogus", "bogus", ",", "ibp,,crown", "crown-lbp:adaptive", ""]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    prop = tmp / "p.vnnlib"
    prop.write_text(digits_property(0.01))
    (tmp / "junk.onnx").write_bytes(b"not an onnx file at all")
    (tmp / "adir").mkdir()
    return {"MODEL": MODEL, "X": X, "PROP": str(prop), "JUNK": str(tmp / "junk.onnx"), "DIR": str(tmp / "adir"),
            "MISSING": str(tmp / "missing.onnx"), "OUT": str(tmp / "out.json"),
            "BADOUT": str(tmp / "no" / "such" / "out.json"), "PNG": str(tmp / "p.png"), "TMP": str(tmp)}


def _opt(draw, name, pool, p=0.5):
    return [name, draw(st.sampled_from(pool))] if draw(st.floats(0, 1)) < p else []


@st.composite
def command_lines(draw):
    cmd = draw(st.sampled_from(["bounds", "bounds", "compare", "stats", "check", "verify", "methods"]))
    model = draw(st.sampled_from(["MODEL"] * 6 + ["JUNK", "DIR", "MISSING", "X"]))
    x = draw(st.sampled_from(["X"] * 6 + ["MODEL", "MISSING", "DIR"]))
    args = [cmd]
    if cmd in ("bounds", "compare", "stats"):
        args += [model] + (["--input", x] if draw(st.floats(0, 1)) < 0.9 else [])
        args += ["--eps", draw(st.sampled_from(NUMBERS))] if draw(st.floats(0, 1)) < 0.9 else []
        args += _opt(draw, "--norm", ["inf", "1", "2", "3", "l2"], 0.3)
        if draw(st.floats(0, 1)) < 0.3:
            args += ["--clip", draw(st.sampled_from(NUMBERS)), draw(st.sampled_from(NUMBERS))]
        args += _opt(draw, "--max-memory", NUMBERS, 0.2)
        if cmd != "compare":
            args += _opt(draw, "--method", METHODS, 0.4)
            args += _opt(draw, "--strategy", ["tight", "adaptive", "constant", "loose"], 0.3)
            args += _opt(draw, "--backend", ["numpy", "foo", "auto", "cupy", "NUMPY", ""], 0.3)
            args += ["--float64"] if draw(st.booleans()) else []
        if cmd != "stats":
            args += _opt(draw, "--label", ["0", "1", "9", "10", "-1", "x"], 0.4)
        if cmd == "compare":
            args += _opt(draw, "--plot-eps", ["0.01,0.02", "x", "-1", ",", "0"], 0.2)
        args += _opt(draw, "--json", ["OUT", "BADOUT", "DIR"], 0.3) if cmd != "compare" else []
    elif cmd == "check":
        args += [model] + _opt(draw, "--samples", ["1", "3", "0", "-2", "x"], 0.5)
        args += _opt(draw, "--rtol", NUMBERS, 0.2) + _opt(draw, "--atol", NUMBERS, 0.2)
        args += ["--graph"] if draw(st.booleans()) else []
    elif cmd == "verify":
        args += [model, draw(st.sampled_from(["PROP"] * 4 + ["MISSING", "X", "DIR"]))]
        args += ["--timeout", draw(st.sampled_from(["1", "0.5", "0", "-1", "nan", "x", "1e-9", "inf", "1e300", "-inf"]))]
        args += _opt(draw, "--methods", CASCADES, 0.5)
        args += ["--no-split"] if draw(st.booleans()) else []
        args += _opt(draw, "--result", ["OUT", "BADOUT", "DIR"], 0.4)
        args += ["--check-only"] if draw(st.floats(0, 1)) < 0.2 else []
    if draw(st.floats(0, 1)) < 0.1:  # an unknown option, a stray argument
        args.insert(draw(st.integers(1, len(args))), draw(st.sampled_from(["--nope", "extra", "-x", "--"])))
    return Case(" ".join(args), args=args)


@given(case=command_lines())
@fuzz_settings(40)
def test_fuzz_command_lines(case, files, cli_worker):
    from onnxverify.onnx.reference import OrtModel

    args = [files.get(a, a) for a in case.args]
    out_json = files["OUT"]
    if os.path.exists(out_json):
        os.remove(out_json)

    def sane(out):
        cmd = case.args[0]
        if cmd == "bounds" and "OUT" in case.args:
            d = json.loads(open(out_json).read())
            lo, hi = np.asarray(d["lower"], dtype=np.float64), np.asarray(d["upper"], dtype=np.float64)
            assert (lo <= hi).all()
            x = np.load(X).astype(np.float32)[None]
            y = np.asarray(OrtModel(MODEL)(x), dtype=np.float64).reshape(1, -1)
            if d["label"] is not None:
                k = d["label"]
                y = (y[:, [k]] - y)[:, [j for j in range(10) if j != k]]
            if d["eps"] == d["eps"] and np.isfinite(lo).all():  # the centre lies in every ball
                tol = 1e-4 * (1 + np.abs(y))
                assert (lo <= y + tol).all() and (y - tol <= hi).all(), (lo, y, hi)
        if cmd == "verify" and "--check-only" not in case.args:
            verdict = out.stdout.strip().splitlines()[0]
            assert verdict in ("sat", "unsat", "unknown", "timeout"), verdict
            if verdict == "sat":  # the counterexample must replay; see test_fuzz_vnnlib for the full check
                assert "counterexample" in out.stderr or "OUT" in case.args
        if cmd == "compare":
            assert "crown-lbp/tight" in out.stdout
        if cmd == "check":
            assert ("-> OK" in out.stdout) == (out.code == 0)
            if out.code == 1:  # a mismatch is a right answer only under a tolerance float32 cannot meet
                tols = [float(v) for k, v in zip(case.args, case.args[1:]) if k in ("--rtol", "--atol")]
                assert tols and min(tols) <= 1e-6, "MISMATCH with the default tolerances"

    codes = (0, 1) if case.args[0] == "check" else (0,)
    judge(cli_worker, args, cli_worker.run(args, LIMIT), sane, LIMIT, repr(case), answer_codes=codes)
