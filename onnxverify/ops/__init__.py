"""Op rules: one module per op family, every rule of an op in one place.

The protocol is :class:`~.base.OpRule` (see :mod:`.base`); generic rules for affine and
elementwise ops are in :mod:`.generic`; the strict, versioned registry is :data:`REGISTRY`
(:mod:`.registry`). Importing this package imports every module in it, which fills the
registry: adding an op is one new module in this folder -- nothing else.
"""
import importlib
import pkgutil

from .base import DEFAULT_STRATEGY, STRATEGIES, Example, Maps, OpRule, TorchTie, check_strategy, onnx_op
from .evaluate import evaluate
from .generic import AffineRule, ElementwiseRule
from .registry import REGISTRY, Registry, register, rule_of

# the op families: importing a module registers its rules and converters
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["AffineRule", "DEFAULT_STRATEGY", "ElementwiseRule", "Example", "Maps", "OpRule", "REGISTRY", "Registry",
           "STRATEGIES", "TorchTie", "check_strategy", "evaluate", "onnx_op", "register", "rule_of"]
