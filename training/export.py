"""Export a trained :class:`~.tied.TrainableNetwork` to ONNX, check it, write its model card.

:func:`export_trained` runs :func:`onnxverify.converters.paramramp_torch.export_onnx` (torch's
dynamo exporter; each ParamRamp becomes one ``onnxverify::ParamRamp`` node with its function
attached; BatchNorm in eval form, which the exporter folds into the preceding conv/linear),
copies the source model's ``onnxverify.*`` metadata, then checks the file:

* onnxruntime against the torch module (eval mode) on ``check_inputs`` (or seeded random
  inputs): max abs difference <= ``atol * (1 + max |y|)``;
* onnxverify imports it and its IR forward agrees with onnxruntime likewise.

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

__all__ = ["ExportCheckError", "export_trained", "card_path", "write_model_card"]


class ExportCheckError(RuntimeError):
    """The exported ONNX model does not compute what the torch module computes."""


def card_path(model_path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".card.json")


def export_trained(net, path, check_inputs: Optional[np.ndarray] = None, atol: float = 1e-4,
                   metadata: Optional[Dict[str, str]] = None, opset: int = 17):
    """Export ``net`` to ``path``; returns ``(ModelProto, check report dict)``."""
    import torch

    from onnxverify.converters import paramramp_torch as prt
    from onnxverify.onnx.importer import import_model
    from onnxverify.onnx.reference import OrtModel

    from .models import model_metadata

    was = net.module.training
    net.eval()
    try:
        example = torch.zeros((1,) + tuple(net.input_shape), device=net.device)
        model = prt.export_onnx(net.module, example, None, opset=opset)
        meta = {f"onnxverify.{k}": v for k, v in model_metadata(net.onnx_model).items()}
        meta.update(metadata or {})
        if meta:
            existing = {p.key: p for p in model.metadata_props}
            for k, v in meta.items():
                if k in existing:
                    existing[k].value = str(v)
                else:
                    model.metadata_props.add(key=k, value=str(v))
        onnx.save_model(model, os.fspath(path))

        if check_inputs is None:
            check_inputs = np.random.default_rng(0).normal(size=(8,) + tuple(net.input_shape)).astype(np.float32)
        x = np.asarray(check_inputs, dtype=np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x).to(net.device)).cpu().numpy()
    finally:
        net.module.train(was)
    ort_out = OrtModel(model)(x).reshape(ref.shape)
    graph = import_model(model)
    ir_out = np.asarray(graph.forward(x)).reshape(ref.shape)
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
