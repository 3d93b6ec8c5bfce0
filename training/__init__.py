"""onnxverify.training: certified training of ONNX models (IBP, CROWN-IBP, fast recipe, ParamRamp).

Importing this package does not import torch; the torch-side names below are loaded on first
use.  Quick tour::

    from onnxverify.training import build_model, make_config, train, evaluate_onnx, load_dataset

    model = build_model("dm-small", "paramramp", input_shape=(1, 8, 8), num_classes=10)
    cfg = make_config("digits-quick", eps_train=0.1, epochs=20)
    result = train(model, cfg, output="small.onnx")        # export + evaluation + model card
    evaluate_onnx("small.onnx", load_dataset("digits"), 0.1, pgd=True)

Modules: :mod:`.models` (ONNX model zoo), :mod:`.data`, :mod:`.schedules`, :mod:`.config`
(no torch); :mod:`.tied` (onnx2torch module + verifier IR with tied parameters),
:mod:`.losses`, :mod:`.regularisers`, :mod:`.init`, :mod:`.trainer`, :mod:`.evaluate`,
:mod:`.export` (torch); :mod:`.cli` (the ``model``/``train``/``evaluate`` commands).
"""
from __future__ import annotations

import importlib

from .config import TrainConfig, make_config
from .data import Dataset, load_dataset
from .models import ARCHITECTURES, build_model
from .schedules import PRESETS, EpsSchedule, EtaSchedule, LrSchedule, TrainingPreset, get_preset

_LAZY = {
    "TrainableNetwork": ".tied",
    "TorchBox": ".tied",
    "train": ".trainer",
    "TrainResult": ".trainer",
    "evaluate_onnx": ".evaluate",
    "evaluate_tied": ".evaluate",
    "pgd_attack": ".evaluate",
    "export_trained": ".export",
    "write_model_card": ".export",
    "certified_loss": ".losses",
}

__all__ = [
    "ARCHITECTURES", "Dataset", "EpsSchedule", "EtaSchedule", "LrSchedule", "PRESETS", "TrainConfig",
    "TrainingPreset", "build_model", "get_preset", "load_dataset", "make_config", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
