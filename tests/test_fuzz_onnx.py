"""Fuzzing the ONNX side: real models, mutated, through ``onnxverify check`` and ``bounds``.

Seeds: the bundled digits MLP, random models from tests/nets.py (conv, residual, NHWC with a
Transpose/shape chain) and, when ../shared/benchmarks exists, small VNN-COMP networks (ACAS
Xu, cartpole, vdp, a verivital MaxPool conv net). Mutations: truncation, bit flips, byte
overwrites, wrong input/initialiser dims, dangling tensor names, huge declared shapes, NaN /
Inf initialisers, dropped or duplicated nodes, swapped op types, bad attributes, opsets,
element types, domains.

Contract (tests/fuzz_worker.py): every case ends in time with exit 2 and exactly one
``error:`` line (no traceback, no "internal error"), or exit 0 with a correct answer:
``check`` says OK (the IR agrees with onnxruntime on the mutated model), ``bounds`` gives
lower <= f(x) <= upper at the centre of the ball, f from onnxruntime.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from hypothesis import given, strategies as st
from onnx import TensorProto

import nets
from conftest import BENCH, fuzz_settings
from fuzz_worker import Case, judge

BUNDLED = os.path.join(os.path.dirname(__file__), "..", "onnxverify", "data", "digits_mlp.onnx")
BENCH_SEEDS = ["reach_prob_density/onnx/vdp.onnx", "rl_benchmarks/onnx/cartpole.onnx",
               "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx", "verivital/onnx/Convnet_maxpool.onnx"]
LIMIT = 60.0  # seconds per case before it counts as a hang


def _seeds() -> dict:
    """name -> serialized model bytes."""
    out = {"digits_mlp": open(BUNDLED, "rb").read()}
    for name in ("convnet", "resnet", "nhwc_shape_chain"):
        out[name] = nets.ALL_BUILDERS[name](0)[0].SerializeToString()
    for rel in BENCH_SEEDS:
        p = BENCH / rel
        if p.is_file():
            out[p.stem] = p.read_bytes()
    return out


SEEDS = _seeds()
NAMES = sorted(SEEDS)

ODD_DIMS = [0, 1, 2, 3, 7, 10**6, 2**31 - 1, 2**40, -1, -5]
ODD_OPS = ["Relu", "Sigmoid", "Softmax", "Conv", "Gemm", "MatMul", "Add", "Mul", "Flatten", "Reshape", "Transpose",
           "LSTM", "MaxPool", "Identity", "Concat", "Bogus", "", "Loop", "If", "Resize", "Einsum"]
ODD_FLOATS = [float("nan"), float("inf"), float("-inf"), 3.0e38, -3.0e38, 1e-45, 0.0]


def _model(data):
    m = onnx.ModelProto()
    m.ParseFromString(data)
    return m


def _pick(draw, seq):
    return seq[draw(st.integers(0, len(seq) - 1))] if len(seq) else None


def _mutate(draw, data: bytes):
    """(bytes, description) of one mutation of ``data``."""
    if not data:  # a stacked mutation can leave nothing to mutate
        return data, "empty file"
    kind = draw(st.sampled_from(["truncate", "bitflip", "overwrite", "input_dims", "input_rank", "init_dims",
                                 "dangling", "huge_shape", "nan_init", "drop_node", "dup_node", "swap_op",
                                 "drop_init", "opset", "attr", "elem_type", "domain", "ir_version",
                                 "output_name", "stack"]))
    if kind == "truncate":
        k = draw(st.integers(0, len(data) - 1))
        return data[:k], f"truncated to {k} of {len(data)} bytes"
    if kind in ("bitflip", "overwrite"):
        b = bytearray(data)
        n = draw(st.integers(1, 16))
        pos = draw(st.lists(st.integers(0, len(b) - 1), min_size=n, max_size=n))
        for p in pos:
            if kind == "bitflip":
                b[p] ^= 1 << draw(st.integers(0, 7))
            else:
                b[p] = draw(st.integers(0, 255))
        return bytes(b), f"{kind} at {sorted(pos)[:8]}"
    m = _model(data)
    g = m.graph
    inits = list(g.initializer)
    if kind == "input_dims":
        dims = g.input[0].type.tensor_type.shape.dim
        i = draw(st.integers(0, len(dims) - 1))
        v = draw(st.sampled_from(ODD_DIMS))
        dims[i].Clear()
        if v >= 0:
            dims[i].dim_value = v
        else:
            dims[i].dim_param = "weird" if v == -1 else ""
        desc = f"input dim {i} -> {v}"
    elif kind == "input_rank":
        shape = g.input[0].type.tensor_type.shape
        if draw(st.booleans()) and len(shape.dim) > 1:
            del shape.dim[-1]
            desc = "input rank - 1"
        else:
            shape.dim.add().dim_value = draw(st.sampled_from([1, 2, 3]))
            desc = "input rank + 1"
    elif kind == "init_dims" and inits:
        t = _pick(draw, g.initializer)
        dims = list(t.dims)
        if dims and draw(st.booleans()):
            dims = dims[::-1]
        else:
            dims = dims + [draw(st.sampled_from([1, 2, 3]))] if draw(st.booleans()) else dims[:-1]
        del t.dims[:]
        t.dims.extend(dims)
        desc = f"initializer {t.name} dims -> {dims}"
    elif kind == "dangling" and len(g.node):
        n = _pick(draw, g.node)
        if len(n.input):
            n.input[draw(st.integers(0, len(n.input) - 1))] = "no_such_tensor"
        desc = f"node {n.name or n.op_type} input -> no_such_tensor"
    elif kind == "huge_shape":
        if inits and draw(st.booleans()):
            t = _pick(draw, g.initializer)
            del t.dims[:]
            t.dims.extend([10**6, 10**6])
            desc = f"initializer {t.name} declared (1e6, 1e6)"
        else:
            dims = g.input[0].type.tensor_type.shape.dim
            for d in dims[1:]:
                d.Clear()
                d.dim_value = 10**5
            desc = "input declared 1e5 per axis"
    elif kind == "nan_init" and inits:
        t = _pick(draw, g.initializer)
        a = onnx.numpy_helper.to_array(t).copy()
        if a.size and a.dtype.kind == "f":
            a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(ODD_FLOATS))
            t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
        desc = f"initializer {t.name}: one odd value"
    elif kind == "drop_node" and len(g.node):
        i = draw(st.integers(0, len(g.node) - 1))
        desc = f"dropped node {i} ({g.node[i].op_type})"
        del g.node[i]
    elif kind == "dup_node" and len(g.node):
        i = draw(st.integers(0, len(g.node) - 1))
        g.node.insert(i, g.node[i])
        desc = f"duplicated node {i} ({g.node[i].op_type})"
    elif kind == "swap_op" and len(g.node):
        n = _pick(draw, g.node)
        old, n.op_type = n.op_type, draw(st.sampled_from(ODD_OPS))
        desc = f"node {n.name}: {old} -> {n.op_type!r}"
    elif kind == "drop_init" and inits:
        i = draw(st.integers(0, len(inits) - 1))
        desc = f"dropped initializer {inits[i].name}"
        del g.initializer[i]
    elif kind == "opset":
        v = draw(st.sampled_from([0, 1, 5, 7, 22, 23, 99, 10**6]))
        m.opset_import[0].version = v
        desc = f"opset -> {v}"
    elif kind == "attr":
        nodes = [n for n in g.node if len(n.attribute)]
        if not nodes:
            return m.SerializeToString(), "no attributes to change"
        n = _pick(draw, nodes)
        a = _pick(draw, n.attribute)
        v = draw(st.sampled_from([0, -1, 2, 1000, 2**40]))
        if a.type == onnx.AttributeProto.INT:
            a.i = v
        elif a.type == onnx.AttributeProto.INTS:
            del a.ints[:]
            a.ints.extend([v] * draw(st.integers(0, 4)))
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = draw(st.sampled_from(ODD_FLOATS))
        desc = f"node {n.name or n.op_type} attribute {a.name} -> {v}"
    elif kind == "elem_type":
        v = draw(st.sampled_from([TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.STRING,
                                  TensorProto.BOOL, 0]))
        g.input[0].type.tensor_type.elem_type = v
        desc = f"input elem_type -> {v}"
    elif kind == "domain" and len(g.node):
        n = _pick(draw, g.node)
        n.domain = draw(st.sampled_from(["com.example", "onnxverify", "ai.onnx.ml", "com.microsoft"]))
        desc = f"node {n.name or n.op_type} domain -> {n.domain}"
    elif kind == "ir_version":
        m.ir_version = draw(st.sampled_from([0, 1, 2, 3, 100]))
        desc = f"ir_version -> {m.ir_version}"
    elif kind == "output_name":
        g.output[0].name = "no_such_output"
        desc = "graph output -> no_such_output"
    elif kind == "stack":  # two proto mutations at once
        data2, d1 = _mutate(draw, m.SerializeToString())
        try:
            _model(data2)
        except Exception:
            return data2, d1
        data3, d2 = _mutate(draw, data2)
        return data3, f"{d1}; {d2}"
    else:
        desc = f"{kind}: nothing to change"
    return m.SerializeToString(), desc


@st.composite
def mutated_models(draw):
    name = draw(st.sampled_from(NAMES))
    data, desc = _mutate(draw, SEEDS[name])
    return Case(f"{name}: {desc}", name=name, data=data)


def _write(tmp, data, tag="m"):
    path = tmp / f"{tag}.onnx"
    path.write_bytes(data)
    return path


def _check_ok(out):
    assert "-> OK" in out.stdout, out.describe()


@given(case=mutated_models())
@fuzz_settings(40)
def test_fuzz_check_mutated_model(case, cli_worker, tmp_path_factory):
    """``check`` on a mutated model: one error line, or the IR agrees with onnxruntime."""
    path = _write(tmp_path_factory.mktemp("m"), case.data)
    args = ["check", path, "--samples", "2"]
    judge(cli_worker, args, cli_worker.run(args, LIMIT), _check_ok, LIMIT, repr(case))


def _input_for(model_bytes):
    """A random input of the seed model's sample shape (and its path) or None."""
    m = _model(model_bytes)
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]
    return tuple(dims) if dims and all(d > 0 for d in dims) else None


@given(case=mutated_models(), method=st.sampled_from(["ibp", "crown", "crown-lbp"]),
       eps=st.sampled_from([0.0, 0.01, 0.1]))
@fuzz_settings(15)
def test_fuzz_bounds_mutated_model(case, method, eps, cli_worker, tmp_path_factory):
    """``bounds`` on a mutated model: one error line, or sound bounds at the ball's centre."""
    from onnxverify.onnx.reference import OrtModel

    name, data = case.name, case.data
    shape = _input_for(SEEDS[name])
    if shape is None:
        shape = (1, 8, 8)
    tmp = tmp_path_factory.mktemp("b")
    path = _write(tmp, data)
    x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    np.save(tmp / "x.npy", x)
    js = tmp / "b.json"
    args = ["bounds", path, "--input", tmp / "x.npy", "--eps", eps, "--method", method, "--json", js]

    def sound(out):
        d = json.loads(js.read_text())
        lo, hi = np.asarray(d["lower"], dtype=np.float64), np.asarray(d["upper"], dtype=np.float64)
        try:  # the reference; a model onnxruntime refuses is judged by the IR's own forward pass
            y = OrtModel(str(path))(x[None])
        except Exception:
            import onnxverify as ov

            y = ov.load(str(path)).forward(x[None])
        y = np.asarray(y, dtype=np.float64).reshape(lo.shape)
        tol = 1e-4 * (1 + np.abs(y))
        finite = np.isfinite(y)
        assert np.all((lo <= y + tol) | ~finite) and np.all((y - tol <= hi) | ~finite), (lo, y, hi)

    judge(cli_worker, args, cli_worker.run(args, LIMIT), sound, LIMIT, repr(case))
