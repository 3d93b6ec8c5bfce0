"""A trained model as a VNN-COMP-style benchmark: one local-robustness property per test image.

:func:`write_vnnlib_benchmark` writes, into a folder ``DIR``::

    DIR/onnx/MODEL.onnx                     a copy of the model
    DIR/vnnlib/prop_<index>_eps_<eps>.vnnlib one property per (test image, eps)
    DIR/instances.csv                        onnx,vnnlib,timeout (paths relative to DIR)
    DIR/properties.csv                       property, test index, label, eps (for people)

Each property states the *unsafe* set, as VNN-COMP does: the l_inf box of radius ``eps``
around the image (in the model's input space: raw pixels clamped to the data range for a
file with its normalisation folded in, else the normalised box), and an output where some
class ``j != label`` scores at least the label (``(or (and (>= Y_j Y_label)) ...)``).  ``sat``
is a counterexample, ``unsat`` proves the image robust.  Bounds are written with ``repr``
of float32-rounded values (exactly representable), lower bound first.
"""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["vnnlib_robustness", "write_vnnlib_benchmark"]


def _num(v: float) -> str:
    return repr(float(np.float32(v)))


def vnnlib_robustness(lower: np.ndarray, upper: np.ndarray, label: int, n_classes: int, comment: str = "") -> str:
    """The VNN-LIB text of one robustness property: input box ``lower``/``upper`` (any shape,
    flattened in C order as ``X_0 ..``), unsafe if any ``Y_j >= Y_label`` (``j != label``)."""
    lo = np.asarray(lower, dtype=np.float32).reshape(-1)
    hi = np.asarray(upper, dtype=np.float32).reshape(-1)
    if lo.shape != hi.shape or np.any(lo > hi):
        raise ValueError("the input box must have lower <= upper, elementwise")
    if not 0 <= int(label) < n_classes:
        raise ValueError(f"label {label} outside 0..{n_classes - 1}")
    out = [f"; {comment}"] if comment else []
    out += [f"(declare-const X_{i} Real)" for i in range(lo.size)]
    out += [f"(declare-const Y_{j} Real)" for j in range(n_classes)]
    out.append("; input box")
    for i in range(lo.size):
        out.append(f"(assert (>= X_{i} {_num(lo[i])}))")
        out.append(f"(assert (<= X_{i} {_num(hi[i])}))")
    out.append(f"; unsafe: some class scores at least the label {int(label)}")
    others = " ".join(f"(and (>= Y_{j} Y_{int(label)}))" for j in range(n_classes) if j != int(label))
    out.append(f"(assert (or {others}))")
    return "\n".join(out) + "\n"


def write_vnnlib_benchmark(model, dataset, eps_list: Sequence[float], out_dir, n: Optional[int] = None,
                           seed: int = 0, timeout: float = 60.0, name: Optional[str] = None) -> Path:
    """Write the benchmark folder for ONNX file ``model`` (see the module docstring) from the
    first ``n`` images of a seeded random order of ``dataset``'s test split (all when None),
    at every radius of ``eps_list`` (raw pixel units).  Returns the path of
    ``instances.csv``."""
    import onnx

    from .evaluate import model_input_space, model_inputs

    model = Path(model)
    proto = onnx.load(str(model), load_external_data=False)
    space = model_input_space(proto)
    out = Path(out_dir)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    (out / "vnnlib").mkdir(parents=True, exist_ok=True)
    onnx_name = name or model.name
    if (out / "onnx" / onnx_name).resolve() != model.resolve():
        shutil.copyfile(model, out / "onnx" / onnx_name)
    order = np.random.default_rng(seed).permutation(dataset.x_test.shape[0])
    if n is not None:
        order = order[: int(n)]
    n_classes = int(np.prod([d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim[1:]] or [1]))
    n_classes = max(n_classes, dataset.num_classes)
    rows, props = [], []
    for eps in eps_list:
        x, lo, hi = model_inputs(dataset, dataset.x_test[order], float(eps), space)
        for k, idx in enumerate(order):
            label = int(dataset.y_test[idx])
            fname = f"prop_{int(idx)}_eps_{float(eps):g}.vnnlib"
            text = vnnlib_robustness(lo[k], hi[k], label, n_classes,
                                     comment=f"{dataset.name} test image {int(idx)}, label {label}, l_inf eps {eps:g} "
                                             f"(raw pixels), model input space: {space}")
            (out / "vnnlib" / fname).write_text(text)
            rows.append((os.path.join("onnx", onnx_name), os.path.join("vnnlib", fname), f"{float(timeout):g}"))
            props.append((fname, int(idx), label, f"{float(eps):g}"))
    with open(out / "instances.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with open(out / "properties.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["vnnlib", "test_index", "label", "eps"])
        w.writerows(props)
    return out / "instances.csv"
