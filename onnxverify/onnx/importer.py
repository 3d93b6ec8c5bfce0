"""ONNX -> IR importer.

First a scan (:func:`unsupported_nodes`) marks every tensor that depends on the network
input and names, all at once, every node on such a tensor that no converter handles at the
model's opset. Then one walk in topological order: tensors are either *constants*
(initializers, Constant nodes, and everything computable from them: shape arithmetic is
folded here with onnx's reference evaluator) or *computed* (they become IR nodes). Every
computed tensor carries a probe value: the IR evaluated at a zero input with batch 1, which
gives its shape and answers ``Shape`` nodes. The converters live with their op rules
(:mod:`onnxverify.ops`, resolved by ``(domain, op_type, opset)`` in the registry); the exact
fusion passes (:mod:`.passes`) run afterwards.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, UnsupportedOpError
from ..ir import INPUT, Graph, Node
from ..ops import REGISTRY, rule_of
from .graph_io import GraphInput, graph_inputs, toposort  # noqa: F401  (GraphInput: re-exported)

_DEFAULT = ("", "ai.onnx")


@dataclass
class ImportContext:
    """State of one import: constants, computed tensors (name -> IR node name) and probes.
    Converters use the methods below (see :mod:`onnxverify.ops.importing`)."""

    opset: int
    consts: dict = field(default_factory=dict)  # onnx tensor name -> np.ndarray
    alias: dict = field(default_factory=dict)  # onnx tensor name -> IR node name
    probes: dict = field(default_factory=dict)  # IR node name -> np.ndarray (batch 1)
    nodes: list = field(default_factory=list)
    used_names: set = field(default_factory=set)

    def is_const(self, name: str) -> bool:
        return name == "" or name in self.consts

    def const(self, name: str):
        return None if name == "" else self.consts[name]

    def computed(self, name: str) -> str:
        return self.alias[name]

    def shape_of(self, name: str) -> tuple:
        """Sample shape (no batch axis) of a computed ONNX tensor."""
        return tuple(self.probes[self.alias[name]].shape[1:])

    def set_const(self, name: str, value) -> None:
        self.consts[name] = np.asarray(value)

    def set_alias(self, onnx_name: str, ir_name: str) -> None:
        """ONNX tensor ``onnx_name`` is the same value as IR node ``ir_name``."""
        self.alias[onnx_name] = ir_name

    def add(self, onnx_out: str, op: str, inputs, params=None, attrs=None, source: str = "", shape=None) -> str:
        """Append an IR node computing ONNX tensor ``onnx_out``; returns the IR name."""
        name = onnx_out
        while name in self.used_names:
            name = name + "'"
        self.used_names.add(name)
        node = Node(name, op, tuple(inputs), dict(params or {}), dict(attrs or {}), tuple(shape or ()), source)
        probe_in = [self.probes[i] for i in node.inputs]
        try:
            out = rule_of(node).forward(_numpy(), node, *probe_in)
        except Exception as e:  # shape errors surface here, with the node named
            raise ModelError(f"node {source or name} ({op}): cannot evaluate: {e}") from None
        node.shape = tuple(out.shape[1:])
        self.probes[name] = out
        self.nodes.append(node)
        self.alias[onnx_out] = name
        return name


def _numpy():
    from ..backend import NUMPY

    return NUMPY


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def load_model(path) -> onnx.ModelProto:
    """Read and structurally check an ONNX file, with one-line errors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"model file not found: {path}")
    try:
        model = onnx.load(path)
    except Exception as e:
        raise ModelError(f"cannot read {path} as ONNX ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if len(model.graph.node) == 0:
        raise ModelError(f"{path}: the ONNX graph has no nodes (is this an ONNX model?)")
    return model


def _fold(node: onnx.NodeProto, inputs: list, opset: int) -> list:
    """Evaluate one ONNX node on constant inputs with onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if n else "" for k, n in enumerate(node.input)]
    tmp = onnx.helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))],
                                domain=node.domain)
    tmp.attribute.extend(node.attribute)
    feeds = {n: v for n, v in zip(names, inputs) if n}
    g = onnx.helper.make_graph(
        [tmp], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in feeds.items()],
        [onnx.helper.make_tensor_value_info(f"o{k}", onnx.TensorProto.UNDEFINED, None) for k in range(len(node.output))],
    )
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return ReferenceEvaluator(m).run(None, feeds)


def _initializer(init) -> np.ndarray:
    try:
        return numpy_helper.to_array(init)
    except Exception as e:  # e.g. dims that do not match the data
        raise ModelError(f"initializer {init.name} is malformed ({type(e).__name__}: {str(e).splitlines()[0][:150]})") \
            from None


def _node_label(n, k: int) -> str:
    """How errors name node number ``k``: its name, else its first output, else its index."""
    return str(n.name or (n.output[0] if n.output else f"#{k}"))


def _check_structure(model: onnx.ModelProto):
    """Op types are text, and every node input is an initializer, a graph input or some
    node's output."""
    for k, n in enumerate(model.graph.node):
        for what, v in (("an op type", n.op_type), ("a domain", n.domain)):
            if not isinstance(v, str):  # protobuf hands invalid UTF-8 back as bytes
                raise ModelError(f"node {_node_label(n, k)} has {what} that is not UTF-8 text ({v[:40]!r}): "
                                 "the file is damaged")
    known = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input} | {""}
    known |= {o for n in model.graph.node for o in n.output}
    for k, n in enumerate(model.graph.node):
        for i in n.input:
            if i not in known:
                raise ModelError(f"node {_node_label(n, k)} ({n.op_type}) reads {i!r}, which no node, initializer "
                                 "or graph input provides")
    for o in model.graph.output:
        if o.name not in known:
            raise ModelError(f"graph output {o.name!r} is not computed by any node")


def _check_finite(model: onnx.ModelProto):
    for init in model.graph.initializer:
        arr = _initializer(init)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise ModelError(f"initializer {init.name} has {bad} NaN/Inf value(s)")


def _opsets(model: onnx.ModelProto) -> dict:
    """Opset version per domain (``""`` for the default domain; 13 when none is declared)."""
    out = {}
    for o in model.opset_import:
        out["" if o.domain in _DEFAULT else o.domain] = int(o.version)
    out.setdefault("", 13)
    return out


def _domain_opset(opsets: dict, domain: str) -> int:
    return opsets.get("" if domain in _DEFAULT else domain, 1)


def unsupported_nodes(model: onnx.ModelProto, opsets: dict | None = None) -> list:
    """``(op_type, label)`` of every node that reads a tensor computed from the network input
    and that no converter handles at the model's opset. Constant subgraphs are folded, so
    they never need converters; an unsupported node's outputs count as computed, so the nodes
    after it are checked too."""
    opsets = opsets or _opsets(model)
    inits = {i.name for i in model.graph.initializer}
    computed = {i.name for i in model.graph.input if i.name not in inits}
    bad = []
    for node in toposort(model.graph):
        if not any(i in computed for i in node.input if i):
            continue
        conv = REGISTRY.converter(node.domain, node.op_type, _domain_opset(opsets, node.domain))
        if conv is None:
            label = str(node.name or (node.output[0] if node.output else f"(unnamed {node.op_type} node)"))
            versions = [c.since for c in REGISTRY.converters_for(node.domain, node.op_type)]
            if versions:
                label += f" (needs opset >= {min(versions)}; the model declares {_domain_opset(opsets, node.domain)})"
            elif node.domain in _DEFAULT:
                label += " (on a computed tensor)"
            bad.append((node.op_type, label))
        if conv is None or not conv.yields_constant:
            computed.update(o for o in node.output if o)
    return bad


def import_model(model_or_path, fuse: bool = True) -> Graph:
    """ONNX model (or path) -> :class:`Graph`. Raises :class:`ModelError` with one line."""
    model = load_model(model_or_path) if not isinstance(model_or_path, onnx.ModelProto) else model_or_path
    _check_structure(model)
    _check_finite(model)
    opsets = _opsets(model)
    unknown = unsupported_nodes(model, opsets)  # before the input checks: the op is the real problem
    if unknown:
        raise UnsupportedOpError(unknown)
    ctx = ImportContext(opset=opsets[""])
    for init in model.graph.initializer:
        ctx.consts[init.name] = _initializer(init)
    inputs = graph_inputs(model)
    _add_inputs(ctx, inputs)
    for node in toposort(model.graph):
        label = node.name or node.output[0]
        conv = REGISTRY.converter(node.domain, node.op_type, _domain_opset(opsets, node.domain))
        if conv is not None and conv.yields_constant and not node.input:  # a source of constants
            conv.fn(ctx, node, _attrs(node), label)
            continue
        if all(ctx.is_const(i) for i in node.input) and node.domain in _DEFAULT:
            try:
                outs = _fold(node, [ctx.const(i) for i in node.input], opsets[""])
            except Exception as e:
                raise ModelError(f"node {label} ({node.op_type}): cannot fold constants: {str(e)[:200]}") from None
            for name, val in zip(node.output, outs):
                ctx.consts[name] = np.asarray(val)
            continue
        if conv is None:  # a custom-domain node on constants only
            raise UnsupportedOpError([(node.op_type, label)])
        try:
            conv.fn(ctx, node, _attrs(node), label)
        except (ValueError, IndexError, KeyError, TypeError) as e:  # a malformed node (arity, shapes, attributes)
            msg = str(e).splitlines()[0][:200] if str(e) else ""
            raise ModelError(f"node {label} ({node.op_type}): cannot import this node ({type(e).__name__}: {msg})"
                             + _unbatched_hint(inputs)) from None
        except ModelError as e:
            if all(i.batched for i in inputs):
                raise
            raise ModelError(str(e) + _unbatched_hint(inputs)) from None

    out_ir = _output(ctx, [o.name for o in model.graph.output])
    used = _reachable(ctx.nodes, out_ir)
    graph = Graph([n for n in ctx.nodes if n.name in used], out_ir)
    if not all(i.batched for i in inputs):
        from .unbatched import check_unbatched

        check_unbatched(model, graph, ctx, inputs)
    if fuse:
        from .passes import fuse_affine

        graph = fuse_affine(graph)
    return graph


def _add_inputs(ctx: ImportContext, inputs: list) -> None:
    """The IR input node: the one ONNX input's sample shape, or the flattened inputs
    concatenated in declaration order (:func:`onnxverify.ops.modelio.split_flat_input`)."""
    for gi in inputs:
        ctx.used_names.add(gi.name)
    if len(inputs) == 1:
        name, shape = inputs[0].name, inputs[0].sample
    else:
        name, shape = "inputs", (sum(gi.size for gi in inputs),)
        while name in ctx.used_names:
            name += "'"
        ctx.used_names.add(name)
    source = "graph input" if len(inputs) == 1 else "graph inputs " + _ranges("X", [(gi.name, gi.size) for gi in inputs])
    ctx.nodes.append(Node(name, INPUT, (), {}, {}, shape, source))
    ctx.alias[name] = name
    ctx.probes[name] = np.zeros((1,) + shape, dtype=np.float32)
    if len(inputs) > 1:
        from ..ops.modelio import split_flat_input

        split_flat_input(ctx, name, [(gi.name, gi.sample) for gi in inputs])


def _output(ctx: ImportContext, outs: list) -> str:
    """IR name of the graph output: the one ONNX output, or the flattened outputs
    concatenated in declaration order (:func:`onnxverify.ops.modelio.concat_flat_outputs`)."""
    if not outs:
        raise ModelError("the model has no graph output")
    for o in outs:
        if o not in ctx.alias:
            raise ModelError(f"output {o} does not depend on the input (constant network)")
    if len(outs) == 1:
        return ctx.alias[outs[0]]
    from ..ops.modelio import concat_flat_outputs

    name = "outputs"
    while name in ctx.used_names or name in ctx.alias:
        name += "'"
    sizes = [(o, int(np.prod(ctx.probes[ctx.alias[o]].shape[1:], dtype=np.int64))) for o in outs]
    return concat_flat_outputs(ctx, outs, name, label="graph outputs " + _ranges("Y", sizes))


def _ranges(var: str, sizes) -> str:
    """``a X_0..X_2, b X_3..X_6``: which VNN-LIB variables each input/output is."""
    out, start = [], 0
    for name, n in sizes:
        out.append(f"{name} {var}_{start}" + (f"..{var}_{start + n - 1}" if n > 1 else ""))
        start += n
    return ", ".join(out)


def _unbatched_hint(inputs: list) -> str:
    if all(i.batched for i in inputs):
        return ""
    names = ", ".join(f"{i.name} {list(i.dims)}" for i in inputs if not i.batched)
    return (f" [input {names} has no batch axis: it is imported as one sample, and ops whose axes or shapes "
            "count from the tensor's first axis are not supported on it]")


def _reachable(nodes: list, output: str) -> set:
    by_name = {n.name: n for n in nodes}
    keep, stack = set(), [output]
    while stack:
        name = stack.pop()
        if name in keep:
            continue
        keep.add(name)
        stack.extend(by_name[name].inputs)
    keep.add(next(n.name for n in nodes if n.op == INPUT))
    return keep
