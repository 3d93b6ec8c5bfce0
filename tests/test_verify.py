"""Verdicts on hand-made properties, result files, time limits, and the `verify` CLI."""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import BENCH, needs_bench
from onnxverify.cli import main
from onnxverify.errors import InputError
from onnxverify.network import Network
from onnxverify.onnx.reference import OrtModel
from onnxverify.verify import DEFAULT_CASCADE, parse_methods, verify
from onnxverify.vnncomp import format_result, read_result, replay_counterexample, write_result
from onnxverify.specs.vnnlib import is_violated, parse_vnnlib


def tiny_net(path):
    """y0 = relu(x0 + x1) - relu(x0 - x1), y1 = (relu(x0 + x1) + relu(x0 - x1)) / 2.

    On [0, 1]^2: y0 in [0, 2] (max 2 at (1, 1)); IBP gives y0 in [-1, 2]."""
    inits = [numpy_helper.from_array(np.array(a, np.float32), n) for a, n in (
        ([[1, 1], [1, -1]], "W1"), ([0, 0], "b1"), ([[1, -1], [0.5, 0.5]], "W2"), ([0, 0], "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


HEADER = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
BOX = "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n"


def prop(tmp_path, body, box=BOX, name="p.vnnlib"):
    p = tmp_path / name
    p.write_text(HEADER + box + body)
    return p


@pytest.fixture
def net_path(tmp_path):
    return tiny_net(tmp_path / "tiny.onnx")


def test_sat_with_known_counterexample(net_path, tmp_path):
    res = verify(net_path, prop(tmp_path, "(assert (>= Y_0 1.9))\n"), timeout=20)
    assert res.verdict == "sat"
    x, y = res.counterexample
    assert np.all(x >= 0) and np.all(x <= 1) and y[0] >= 1.9
    ok, y_ort = replay_counterexample(net_path, prop(tmp_path, "(assert (>= Y_0 1.9))\n"), x)
    assert ok and np.allclose(y_ort, y)


def test_unsat_by_ibp_alone(net_path, tmp_path):
    res = verify(net_path, prop(tmp_path, "(assert (>= Y_0 2.5))\n"), timeout=20, methods="ibp", attack=False)
    assert res.verdict == "unsat"
    assert [e["step"] for e in res.log] == ["ibp"] and res.log[0]["open_disjuncts"] == 0


def test_unsat_beyond_ibp_needs_split_or_tighter_bounds(net_path, tmp_path):
    p = prop(tmp_path, "(assert (<= Y_0 -0.5))\n")  # true min of y0 is 0, IBP says -1
    assert verify(net_path, p, timeout=20, methods="ibp", split=False, complete=False).verdict == "unknown"
    res = verify(net_path, p, timeout=20, methods="ibp")
    assert res.verdict == "unsat" and res.log[-1]["step"] == "split"
    assert verify(net_path, p, timeout=20).verdict == "unsat"  # default cascade


def test_disjunction_one_part_proved_other_sat(net_path, tmp_path):
    body = "(assert (or (and (>= Y_0 2.5)) (and (>= Y_1 0.9) (<= Y_0 1.0))))\n"
    res = verify(net_path, prop(tmp_path, body), timeout=20)
    assert res.verdict == "sat"
    x, y = res.counterexample
    assert y[1] >= 0.9 and y[0] <= 1.0


def test_output_comparison_between_outputs(net_path, tmp_path):
    # y1 >= y0 everywhere on the box? y1 - y0 = 1.5 relu(x0 - x1) - 0.5 relu(x0 + x1): negative at (0, 1)
    res = verify(net_path, prop(tmp_path, "(assert (>= Y_0 Y_1))\n"), timeout=20)
    assert res.verdict == "sat" and res.counterexample[1][0] >= res.counterexample[1][1]


def test_input_disjunction_every_box_must_be_proved(net_path, tmp_path):
    box = ("(assert (>= X_1 0.0))\n(assert (<= X_1 0.1))\n"
           "(assert (or (and (>= X_0 0.0) (<= X_0 0.1)) (and (>= X_0 0.9) (<= X_0 1.0))))\n")
    p = prop(tmp_path, "(assert (>= Y_0 0.5))\n", box=box)  # y0 = 2 x1 <= 0.2 when x0 >= x1
    assert len(parse_vnnlib(p).cases) == 2
    assert verify(net_path, p, timeout=20).verdict == "unsat"
    p2 = prop(tmp_path, "(assert (>= Y_1 0.5))\n", box=box, name="p2.vnnlib")  # y1 ~ x0 near 1
    res = verify(net_path, p2, timeout=20)
    assert res.verdict == "sat" and res.counterexample[0][0] >= 0.9


def test_no_output_constraint_is_trivially_sat(net_path, tmp_path):
    res = verify(net_path, prop(tmp_path, "(assert (<= X_0 1.0))\n"), timeout=20)
    assert res.verdict == "sat"


def test_result_file_round_trip_and_onnxruntime_replay(net_path, tmp_path):
    p = prop(tmp_path, "(assert (>= Y_0 1.9))\n")
    res = verify(net_path, p, timeout=20)
    f = tmp_path / "out" / "r.txt"
    write_result(f, res.verdict, res.counterexample)
    text = f.read_text()
    lines = text.splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and lines[-1].endswith("))")
    assert sum(line.strip().lstrip("(").startswith("Y_") for line in lines) == 2
    verdict, x, y = read_result(f)
    assert verdict == "sat"
    np.testing.assert_array_equal(x, res.counterexample[0])  # full float repr: exact
    y_ort = OrtModel(net_path)(x.astype(np.float32).reshape(1, 2)).ravel()
    np.testing.assert_allclose(y, y_ort, rtol=0, atol=0)
    assert is_violated(parse_vnnlib(p), x, y_ort)


@pytest.mark.parametrize("verdict", ["unsat", "unknown", "timeout", "error"])
def test_result_file_plain_verdicts(tmp_path, verdict):
    write_result(tmp_path / "r.txt", verdict)
    assert (tmp_path / "r.txt").read_text() == verdict + "\n"
    assert read_result(tmp_path / "r.txt") == (verdict, None, None)


def test_read_result_accepts_competition_spellings(tmp_path):
    (tmp_path / "r.txt").write_text("violated\n((X_0 1.5) (X_1 -2e-3)\n(Y_0 7))\n")
    v, x, y = read_result(tmp_path / "r.txt")
    assert v == "sat" and x.tolist() == [1.5, -0.002] and y.tolist() == [7.0]
    with pytest.raises(ValueError):
        format_result("maybe")


def test_methods_parsing_names_the_wrong_entry():
    assert parse_methods("ibp, crown:tight") == [("ibp", None), ("crown", "tight")]
    assert parse_methods(None) == list(DEFAULT_CASCADE)
    assert parse_methods([("relaxed-crown-2", "adaptive")]) == [("relaxed-crown-2", "adaptive")]
    with pytest.raises(InputError, match="no bound methods"):
        parse_methods(" , ")
    with pytest.raises(InputError, match=r"unknown strategy 'bogus' in 'crown:bogus'.*adaptive"):
        parse_methods("ibp,crown:bogus")
    with pytest.raises(InputError, match=r"unknown method 'nosuch'.*crown-ibp"):
        parse_methods("nosuch,ibp")
    with pytest.raises(InputError, match="V must be an integer"):
        parse_methods("relaxed-crown-0")


def test_unknown_methods_are_input_errors(net_path, tmp_path):
    """A cascade with a typo is refused before any work (it used to be skipped silently)."""
    for methods in ("nosuch", "nosuch,ibp", "crown:bogus"):
        with pytest.raises(InputError):
            verify(net_path, prop(tmp_path, "(assert (>= Y_0 2.5))\n"), methods=methods)
    assert verify(net_path, prop(tmp_path, "(assert (>= Y_0 2.5))\n"), methods="ibp").verdict == "unsat"


def test_accepts_network_and_property_objects(net_path, tmp_path):
    from onnxverify import load

    net = load(net_path)
    assert isinstance(net, Network)
    res = verify(net, parse_vnnlib(prop(tmp_path, "(assert (>= Y_0 2.5))\n")), timeout=10)
    assert res.verdict == "unsat"


def test_timeout_is_honoured_inside_a_long_step(net_path, tmp_path, monkeypatch):
    def slow_bounds(self, *a, **k):
        time.sleep(30)

    monkeypatch.setattr(Network, "bounds", slow_bounds)
    t = time.monotonic()
    res = verify(net_path, prop(tmp_path, "(assert (<= Y_0 -0.5))\n"), timeout=2)
    assert res.verdict == "timeout"
    assert time.monotonic() - t < 3.0 and res.time <= 2.0


@needs_bench
def test_timeout_on_a_hard_benchmark_instance():
    # no tool decided this one in 300 s; CROWN on this residual net alone takes seconds
    a = BENCH / "cifar10_resnet"
    t = time.monotonic()
    res = verify(a / "onnx/resnet_2b.onnx", a / "vnnlib/resnet2b_pgd_filtered/prop_0_eps_0.008.vnnlib", timeout=2)
    assert res.verdict in ("timeout", "unknown")
    assert time.monotonic() - t < 3.0


def test_bad_property_size_raises(net_path, tmp_path):
    p = tmp_path / "bad.vnnlib"
    p.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
                 "(assert (>= Y_0 1))\n")
    with pytest.raises(ValueError, match="1 inputs"):
        verify(net_path, p)


# ----------------------------------------------------------------------------- CLI
def test_cli_verify_sat_writes_result(net_path, tmp_path):
    out = tmp_path / "res.txt"
    r = CliRunner().invoke(main, ["verify", str(net_path), str(prop(tmp_path, "(assert (>= Y_0 1.9))\n")),
                                  "--timeout", "20", "--result", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "sat"
    v, x, y = read_result(out)
    assert v == "sat" and len(x) == 2 and len(y) == 2


def test_cli_verify_unsat_and_methods(net_path, tmp_path):
    r = CliRunner().invoke(main, ["verify", str(net_path), str(prop(tmp_path, "(assert (>= Y_0 2.5))\n")),
                                  "--methods", "ibp", "--timeout", "10"])
    assert r.exit_code == 0 and r.output.splitlines()[0] == "unsat"


def test_cli_check_only(net_path, tmp_path):
    r = CliRunner().invoke(main, ["verify", str(net_path), str(prop(tmp_path, "(assert (>= Y_0 2.5))\n")), "--check-only"])
    assert r.exit_code == 0 and r.output.startswith("ok:")


@pytest.mark.parametrize("case", ["missing_model", "missing_prop", "size_mismatch", "syntax", "bad_timeout",
                                  "corrupt_model"])
def test_cli_verify_one_line_errors(net_path, tmp_path, case):
    good = prop(tmp_path, "(assert (>= Y_0 2.5))\n")
    model, p, extra = str(net_path), str(good), []
    if case == "missing_model":
        model = str(tmp_path / "nope.onnx")
    elif case == "missing_prop":
        p = str(tmp_path / "nope.vnnlib")
    elif case == "size_mismatch":
        bad = tmp_path / "s.vnnlib"
        bad.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
                       "(assert (>= Y_0 1))\n")
        p = str(bad)
    elif case == "syntax":
        bad = tmp_path / "x.vnnlib"
        bad.write_text(HEADER + BOX + "(assert (>= Y_0 1.0)\n")
        p = str(bad)
    elif case == "bad_timeout":
        extra = ["--timeout", "0"]
    elif case == "corrupt_model":
        (tmp_path / "c.onnx").write_bytes(b"not an onnx file at all")
        model = str(tmp_path / "c.onnx")
    out = tmp_path / "res.txt"
    r = CliRunner().invoke(main, ["verify", model, p, "--result", str(out), *extra])
    assert r.exit_code == 2, r.output
    err_lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    import threading

    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer) and not t.finished.is_set()]  # no watchdog left
    if case != "bad_timeout":
        assert out.read_text() == "error\n"
