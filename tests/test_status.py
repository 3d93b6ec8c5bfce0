"""Neuron statuses (issue 3): counts, their link to each method's bounds, the stats CLI, the plot."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import nets
import onnxverify as ov
from onnxverify.ops import evaluate
from onnxverify.cli import main
from onnxverify.bounds.status import (
    PARAMRAMP_STATUSES,
    RELU_STATUSES,
    neuron_status,
    paramramp_status,
    preactivation_bounds,
    relu_status,
)
from onnxverify.report.status import format_status_table, plot_status
from test_paramramp_bounds import _network, _x0, paramramp_conv, paramramp_mlp

LINEAR = ("lbp", "crown-ibp", "crown-lbp", "crown", "relaxed-crown-2")


# many small matrix products: one BLAS/torch thread keeps them fast on a busy machine
pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _cases():
    out = []
    for name, (model, iset) in {
        "paramramp-mlp": (paramramp_mlp(0, 0.01), 0.15),
        "paramramp-conv": (paramramp_conv(1, 0.0), 0.08),
        "relu-mlp": (nets.mlp(0)[0], 0.1),
        "leaky-mlp": (nets.mlp_leaky(1)[0], 0.1),
        "relu-conv": (nets.convnet(0)[0], 0.05),
    }.items():
        net = _network(model)
        out.append((name, net, ov.LinfBall(_x0(model, 3, batch=3), iset)))
    return out


CASES = _cases()
IDS = [c[0] for c in CASES]


def test_status_classifiers():
    l = np.array([-2.0, -1.0, 0.0, 0.5, 0.0, 1.0, 2.0, -1.0, 0.0, 1.0])
    u = np.array([-1.0, 0.5, 0.5, 2.0, 0.0, 1.0, 3.0, 3.0, 1.0, 1.0])
    r = np.ones_like(l)
    want = ["left dead", "left unstable", "alive", "right unstable", "left dead", "right dead", "right dead",
            "unstable", "alive", "right dead"]
    assert [PARAMRAMP_STATUSES[c] for c in paramramp_status(l, u, r)] == want
    # r is clamped to 1e-4 like in the op
    assert PARAMRAMP_STATUSES[paramramp_status(np.array([0.5e-4]), np.array([1.0]), np.array([-3.0]))[0]] == \
        "right unstable"
    assert [RELU_STATUSES[c] for c in relu_status(l, u)] == \
        ["dead", "unstable", "alive", "alive", "dead", "alive", "alive", "unstable", "alive", "alive"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_counts_add_up_to_layer_size(case):
    name, net, iset = case
    acts = [n for n in net.graph.nodes if n.op in ("Relu", "LeakyRelu", "ParamRamp")]
    for method in ("ibp",) + LINEAR:
        sts = neuron_status(net, iset, method, strategy="tight")
        assert [s.name for s in sts] == [n.name for n in acts]
        for st, node in zip(sts, acts):
            assert st.size == node.size and st.batch == 3
            assert sum(st.counts.values()) == st.total == 3 * node.size
            assert st.per_sample().sum(axis=1).tolist() == [node.size] * 3
            assert abs(sum(st.fractions.values()) - 1) < 1e-12
            assert tuple(st.counts) == (PARAMRAMP_STATUSES if node.op == "ParamRamp" else RELU_STATUSES)
            assert st.codes.shape == (3,) + tuple(node.shape)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("strategy", ("tight", "adaptive", "constant"))
def test_tighter_methods_have_no_more_unstable_neurons(case, strategy):
    name, net, iset = case
    ibp = neuron_status(net, iset, "ibp")
    per = {m: neuron_status(net, iset, m, strategy=strategy) for m in LINEAR}
    for m, sts in per.items():
        for a, b in zip(ibp, sts):
            assert b.unstable <= a.unstable, (m, a.name)
            # the bounds only shrink: a neuron IBP decided keeps its status
            decided = np.isin(a.codes, _decided(a))
            assert (b.codes[decided] == a.codes[decided]).all(), (m, a.name)
    # crown-ibp uses IBP's intermediate bounds, crown-lbp LBP's
    for a, b in zip(ibp, per["crown-ibp"]):
        assert a.counts == b.counts
    for a, b in zip(per["lbp"], per["crown-lbp"]):
        assert a.counts == b.counts
    if strategy == "tight":  # Theorem 2 for the intermediate bounds: crown's are the tightest
        for a, b in zip(per["crown-lbp"], per["crown"]):
            assert b.unstable <= a.unstable


def _decided(st):
    return [k for k, s in enumerate(st.statuses) if "unstable" not in s]


def test_some_linear_method_decides_more_neurons():
    """Not vacuous: on the ParamRamp MLP, CROWN decides neurons that IBP leaves unstable."""
    _, net, iset = CASES[0]
    ibp = sum(s.unstable for s in neuron_status(net, iset, "ibp"))
    crown = sum(s.unstable for s in neuron_status(net, iset, "crown", "tight"))
    assert crown < ibp


@pytest.mark.parametrize("case", CASES[:2] + CASES[4:], ids=IDS[:2] + IDS[4:])
def test_preactivation_bounds_are_sound_and_match_the_method(case):
    """The bounds behind the statuses contain sampled pre-activations, and CROWN's are at least
    as tight as CROWN's output bounds on the graph cut at that pre-activation."""
    name, net, iset = case
    g = net.graph
    rng = np.random.default_rng(0)
    lo, hi = iset.box()
    x = lo[:, None] + rng.uniform(0, 1, (3, 200) + lo.shape[1:]) * (hi - lo)[:, None]
    vals = evaluate(g, x.reshape((-1,) + g.input_shape), keep_all=True)
    for method in ("ibp", "lbp", "crown"):
        pre = preactivation_bounds(g, iset, method, "tight", dtype=np.float64)
        for name_, (l, u) in pre.items():
            v = np.asarray(vals[name_], np.float64).reshape((3, 200) + tuple(g[name_].shape))
            assert (v >= np.asarray(l)[:, None] - 1e-5).all() and (v <= np.asarray(u)[:, None] + 1e-5).all()
            if method == "crown":
                keep = {n.name for n in g.nodes[: [n.name for n in g.nodes].index(name_) + 1]}
                cut = ov.Graph([n for n in g.nodes if n.name in keep], name_)
                ref = ov.compute_bounds(cut, iset, "crown", strategy="tight", dtype=np.float64)
                # CROWN runs backward passes only for neurons whose activation is not linear on
                # [l, u] (decided neurons keep IBP's bounds, which decide them already)
                sts = [s for s in neuron_status(g, iset, "crown", "tight", dtype=np.float64) if s.input == name_]
                if not sts:  # feeds a MaxPool
                    continue
                st = sts[0]
                m = np.isin(st.codes, [k for k, s in enumerate(st.statuses) if "unstable" in s])
                assert m.any()
                assert (np.asarray(l)[m] >= np.asarray(ref.lower)[m] - 1e-7).all()
                assert (np.asarray(u)[m] <= np.asarray(ref.upper)[m] + 1e-7).all()


def test_status_of_network_without_activations_is_empty():
    _, net, iset = CASES[0]
    g = net.graph
    first = next(n for n in g.nodes if n.op == "Linear")
    lin = ov.Graph([g.input, first], first.name)
    assert neuron_status(lin, iset, "crown") == []
    with pytest.raises(TypeError):
        neuron_status(object(), iset)
    with pytest.raises(ov.InputError):
        neuron_status(net, iset, "nope")


def test_table_has_one_row_per_layer():
    _, net, iset = CASES[0]
    sts = neuron_status(net, iset, "crown-lbp", "tight")
    table = format_status_table(sts)
    lines = table.splitlines()
    assert len(lines) == 2 + len(sts)
    for s in PARAMRAMP_STATUSES:
        assert s in lines[0]
    mixed = format_status_table(sts + neuron_status(CASES[2][1], CASES[2][2]))
    assert "dead" in mixed.splitlines()[0].split() and "-" in mixed.splitlines()[-1].split()


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    _, net, iset = CASES[0]
    p = plot_status(neuron_status(net, iset), tmp_path / "one.png")
    assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    panels = {"ReLU": neuron_status(CASES[2][1], CASES[2][2]), "ParamRamp": neuron_status(net, iset)}
    p = plot_status(panels, tmp_path / "two.png", title="ReLU vs ParamRamp")
    assert (tmp_path / "two.png").stat().st_size > 1000


def test_plot_without_matplotlib_says_so(tmp_path, monkeypatch):
    import sys

    _, net, iset = CASES[0]
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_status(neuron_status(net, iset), tmp_path / "x.png")


# ---- CLI -------------------------------------------------------------------------------------
def _files(tmp_path, case=0):
    name, net, iset = CASES[case]
    path = tmp_path / "m.onnx"
    onnx.save(net.model, path)
    x = np.asarray(iset.x0, np.float32)
    np.save(tmp_path / "x.npy", x)
    return path, tmp_path / "x.npy", net


def test_cli_stats_prints_table_and_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    model, x, net = _files(tmp_path)
    png = tmp_path / "status.png"
    res = CliRunner().invoke(main, ["stats", str(model), "--input", str(x), "--eps", "0.15", "--method", "crown-lbp",
                                    "--strategy", "tight", "--plot", str(png), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    for s in PARAMRAMP_STATUSES:
        assert s in res.output
    assert "crown-lbp / tight" in res.output and "3 sample(s)" in res.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    import json

    d = json.loads((tmp_path / "s.json").read_text())
    want = neuron_status(net, ov.LinfBall(np.load(x), 0.15), "crown-lbp", "tight")
    assert [l["counts"] for l in d["layers"]] == [s.counts for s in want]


def test_cli_stats_relu_net_and_options(tmp_path):
    model, x, _ = _files(tmp_path, case=4)
    res = CliRunner().invoke(main, ["stats", str(model), "--input", str(x), "--eps", "0.05", "--clip", "0", "1",
                                    "--counts", "--float64"])
    assert res.exit_code == 0, res.output
    assert "dead" in res.output and "unstable" in res.output and "left dead" not in res.output
    res = CliRunner().invoke(main, ["stats", str(model), "--input", str(x), "--eps", "0.5", "--norm", "2",
                                    "--method", "crown"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("args,needle", [
    (["--eps", "-1"], "eps"),
    (["--eps", "0.1", "--method", "magic"], "method"),
])
def test_cli_stats_bad_input_is_one_line(tmp_path, args, needle):
    model, x, _ = _files(tmp_path)
    res = CliRunner().invoke(main, ["stats", str(model), "--input", str(x)] + args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.output


def test_torch_backend_and_float64_give_the_same_statuses():
    pytest.importorskip("torch")
    _, net, iset = CASES[1]
    for method in ("ibp", "crown-lbp", "crown"):
        ref = neuron_status(net, iset, method, "tight")
        for kw in ({"backend": "torch"}, {"dtype": np.float64}):
            assert [s.counts for s in neuron_status(net, iset, method, "tight", **kw)] == [s.counts for s in ref]


@pytest.mark.skipif(not hasattr(ov.Network, "neuron_status"), reason="Network.neuron_status not added yet")
def test_network_method_matches_the_function():
    _, net, iset = CASES[0]
    got = net.neuron_status(iset, "crown-lbp", strategy="tight")
    assert [s.counts for s in got] == [s.counts for s in neuron_status(net, iset, "crown-lbp", "tight")]


def test_cli_stats_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    import sys

    model, x, _ = _files(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = CliRunner().invoke(main, ["stats", str(model), "--input", str(x), "--eps", "0.1", "--plot",
                                    str(tmp_path / "s.png")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "matplotlib" in lines[0]
