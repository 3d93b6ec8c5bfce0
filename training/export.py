"""Export a trained :class:`~.tied.TrainableNetwork` to ONNX, check it, write its model card.

:func:`export_trained` runs :func:`onnxverify.converters.paramramp_torch.export_onnx` (torch's
dynamo exporter; each ParamRamp becomes one ``onnxverify::ParamRamp`` node with its function
attached; BatchNorm in eval form, which the exporter folds into the preceding conv/linear),
copies the source model's ``onnxverify.*`` metadata, then checks the file:

* onnxruntime against the torch module (eval mode) on ``check_inputs`` (or seeded random
  inputs): max abs difference <= ``atol * (1 + max |y|)``;
* onnxverify imports it and its IR forward agrees with onnxruntime likewise.

With ``normalization=(mean, std)`` the data set's normalisation is folded into the file as its
first nodes (``Sub``, ``Div``; none for mean 0 / std 1), so the file takes raw pixels in the
data range and eps is in pixel units for ``verify``, VNN-LIB properties and other verifiers
(metadata ``onnxverify.input_space = raw``).

A failed check raises :class:`ExportCheckError`.  :func:`write_model_card` writes the JSON card
``<stem>.card.json`` beside the model.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import onnx

__all__ = ["ExportCheckError", "export_trained", "fold_normalization", "card_path", "write_model_card",
           "data_locations", "card_data_spec"]


class ExportCheckError(RuntimeError):
    """The exported ONNX model does not compute what the torch module computes."""


def card_path(model_path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".card.json")


def fold_normalization(model: onnx.ModelProto, mean, std) -> onnx.ModelProto:
    """Prepend ``(x - mean) / std`` (per channel, ``mean``/``std`` of shape ``(C,)``) to the
    model's input, in place: the graph input keeps its name and now takes raw pixels.  No
    nodes are added when ``mean`` is 0 and ``std`` 1.  Sets the metadata
    ``onnxverify.input_space = raw``.  Returns ``model``."""
    from onnx import helper, numpy_helper

    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    g = model.graph
    init_names = {t.name for t in g.initializer}
    inp = [i for i in g.input if i.name not in init_names][0]
    rank = len(inp.type.tensor_type.shape.dim)
    if np.any(mean != 0) or np.any(std != 1):
        shape = (1, -1) + (1,) * max(rank - 2, 0)
        raw, normed = inp.name, inp.name + "__normalized"
        for node in g.node:
            node.input[:] = [normed if v == raw else v for v in node.input]
        for o in g.output:
            if o.name == raw:  # pragma: no cover - an identity model
                raise ValueError("cannot fold normalisation into a model whose output is its input")
        g.initializer.extend([numpy_helper.from_array(mean.reshape(shape), raw + "__mean"),
                              numpy_helper.from_array(std.reshape(shape), raw + "__std")])
        nodes = [helper.make_node("Sub", [raw, raw + "__mean"], [raw + "__centred"], name="normalize_sub"),
                 helper.make_node("Div", [raw + "__centred", raw + "__std"], [normed], name="normalize_div")]
        rest = list(g.node)
        del g.node[:]
        g.node.extend(nodes + rest)
    _set_meta(model, {"onnxverify.input_space": "raw", "onnxverify.input_mean": json.dumps(mean.tolist()),
                      "onnxverify.input_std": json.dumps(std.tolist())})
    return model


def _set_meta(model: onnx.ModelProto, meta: Dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for k, v in meta.items():
        if k in existing:
            existing[k].value = str(v)
        else:
            model.metadata_props.add(key=k, value=str(v))


def export_trained(net, path, check_inputs: Optional[np.ndarray] = None, atol: float = 1e-4,
                   metadata: Optional[Dict[str, str]] = None, opset: int = 17, normalization=None):
    """Export ``net`` to ``path``; returns ``(ModelProto, check report dict)``.

    ``normalization``: ``(mean, std)`` of the data the network was trained on (``(C,)`` each):
    folded into the file as its first nodes (:func:`fold_normalization`), so the file takes raw
    pixels; ``check_inputs`` are still *normalised* inputs ``(N, *input_shape)`` (the torch
    module's), the file is checked on ``x * std + mean``.  None: the file takes normalised
    inputs like the module (metadata ``onnxverify.input_space = normalized``)."""
    import torch

    from onnxverify.converters import paramramp_torch as prt
    from onnxverify.onnx.importer import import_model
    from onnxverify.ops import evaluate
    from onnxverify.onnx.reference import OrtModel

    from .models import model_metadata

    was = net.module.training
    net.eval()
    try:
        example = torch.zeros((1,) + tuple(net.input_shape), device=net.device)
        model = prt.export_onnx(net.module, example, None, opset=opset)
        meta = {f"onnxverify.{k}": v for k, v in model_metadata(net.onnx_model).items()}
        meta.update(metadata or {})
        _set_meta(model, meta)
        if normalization is not None:
            fold_normalization(model, *normalization)
        else:
            _set_meta(model, {"onnxverify.input_space": "normalized"})
        onnx.save_model(model, os.fspath(path))

        if check_inputs is None:
            check_inputs = np.random.default_rng(0).normal(size=(8,) + tuple(net.input_shape)).astype(np.float32)
        x = np.asarray(check_inputs, dtype=np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x).to(net.device)).cpu().numpy()
    finally:
        net.module.train(was)
    if normalization is not None:
        m = np.asarray(normalization[0], np.float32).reshape(1, -1, *([1] * (x.ndim - 2)))
        sd = np.asarray(normalization[1], np.float32).reshape(1, -1, *([1] * (x.ndim - 2)))
        x = (x * sd + m).astype(np.float32)
    ort_out = OrtModel(model)(x).reshape(ref.shape)
    graph = import_model(model)
    ir_out = np.asarray(evaluate(graph, x)).reshape(ref.shape)
    scale = 1.0 + float(np.abs(ref).max())
    report = {"n_inputs": int(x.shape[0]), "max_abs_err_ort_vs_torch": float(np.abs(ort_out - ref).max()),
              "max_abs_err_onnxverify_vs_ort": float(np.abs(ir_out - ort_out).max()), "atol": atol * scale}
    if report["max_abs_err_ort_vs_torch"] > atol * scale:
        raise ExportCheckError(f"exported model differs from torch by {report['max_abs_err_ort_vs_torch']:.3g} "
                               f"(> {atol * scale:.3g}) in onnxruntime")
    if report["max_abs_err_onnxverify_vs_ort"] > atol * scale:
        raise ExportCheckError(f"onnxverify's IR of the exported model differs from onnxruntime by "
                               f"{report['max_abs_err_onnxverify_vs_ort']:.3g}")
    report["ok"] = True
    report["input_space"] = "raw" if normalization is not None else "normalized"
    report["ir_ops"] = graph.op_counts()
    return model, report


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return o


def write_model_card(model_path, card: Dict) -> Path:
    """Write ``card`` (plus the file name and a timestamp) as ``<stem>.card.json``."""
    out = card_path(model_path)
    full = {"model_file": Path(model_path).name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    full.update(card)
    out.write_text(json.dumps(_jsonable(full), indent=2))
    return out


def _spec_dir(spec: str):
    kind, sep, arg = str(spec).partition(":")
    return (kind, arg.strip()) if sep and arg.strip() else (kind, None)


def data_locations(spec: str, card_dir) -> Dict[str, str]:
    """``{"path": absolute folder, "path_from_card": folder relative to card_dir}`` of a
    ``mnist:DIR`` / ``cifar10:DIR`` spec (empty for ``digits``)."""
    kind, folder = _spec_dir(spec)
    if folder is None:
        return {}
    absolute = Path(folder).expanduser().resolve()
    try:
        rel = os.path.relpath(absolute, Path(card_dir).resolve())
    except ValueError:  # pragma: no cover - another drive on Windows
        rel = str(absolute)
    return {"path": str(absolute), "path_from_card": rel}


def card_data_spec(card: Dict, card_file) -> str:
    """The data spec of a model card, with its folder resolved for the current directory:
    the spec as written if that folder exists from here, else the absolute path, else the path
    relative to the card (whichever exists; the spec as written when none does)."""
    data = card.get("data", {}) or {}
    spec = data.get("spec") or "digits"
    kind, folder = _spec_dir(spec)
    if folder is None:
        return spec
    candidates = [Path(folder).expanduser()]
    if data.get("path"):
        candidates.append(Path(data["path"]))
    if data.get("path_from_card"):
        candidates.append(Path(card_file).resolve().parent / data["path_from_card"])
    for c in candidates:
        if c.is_dir():
            return f"{kind}:{c}"
    return spec
