"""Loading a verification problem: the network (when the IR can import it), an onnxruntime
session (always: it confirms counterexamples) and the parsed property."""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError

__all__ = ["load_problem", "prop_input_shape"]


def prop_input_shape(ort, prop):
    shape = ort.sample_shape  # the IR's reading: no batch axis, several inputs concatenated
    if shape is not None and int(np.prod(shape)) == prop.n_inputs:
        return tuple(shape)
    return (prop.n_inputs,)


def load_problem(model, prop):
    """(Network or None, OrtModel, Property, note): a model the IR cannot import still gets an
    onnxruntime session, so sampling can look for counterexamples."""
    from ..errors import ModelError, UnsupportedOpError
    from ..network import Network, load
    from ..onnx.reference import OrtModel
    from ..specs.vnnlib import Property, parse_vnnlib

    note = ""
    if isinstance(model, Network):
        net = model
        ort = OrtModel(net.model if net.model is not None else net.path)
    else:
        path = os.fspath(model)
        if not os.path.exists(path):
            raise ModelError(f"model file not found: {path}")
        try:
            net = load(path)
        except UnsupportedOpError as e:
            net, note = None, str(e)
        try:
            ort = OrtModel(path)
        except Exception as e:
            raise ModelError(f"onnxruntime cannot run {path}: {str(e).splitlines()[0][:300]}") from None
    if isinstance(prop, Property):
        p = prop
    else:
        if not os.path.exists(os.fspath(prop)):
            raise InputError(f"property file not found: {prop}")
        p = parse_vnnlib(os.fspath(prop))
    if net is not None:
        p.check_sizes(net.n_inputs, net.n_outputs)
    else:
        if ort.sample_shape is not None:
            p.check_sizes(int(np.prod(ort.sample_shape)), None)
    return net, ort, p, note
