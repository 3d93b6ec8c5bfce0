"""One error hierarchy: every problem a user can act on is an :class:`OnnxVerifyError`.

The CLI prints these as one ``error: ...`` line and exits with code 2; anything else is an
internal error (exit 3, "please report").
"""


class OnnxVerifyError(Exception):
    """Base class: a problem with the user's input, stated in one line."""


class ModelError(OnnxVerifyError):
    """The ONNX file is missing, corrupt, or uses something we do not support."""


class UnsupportedOpError(ModelError):
    """One or more ONNX nodes have no IR rule. ``unsupported`` lists (op_type, node_name)."""

    def __init__(self, unsupported):
        self.unsupported = list(unsupported)
        kinds = sorted({op for op, _ in self.unsupported})
        nodes = ", ".join(f"{name} ({op})" for op, name in self.unsupported[:20])
        more = f" and {len(self.unsupported) - 20} more" if len(self.unsupported) > 20 else ""
        super().__init__(f"unsupported ONNX op type(s) {', '.join(kinds)} at node(s): {nodes}{more}")


class InputError(OnnxVerifyError):
    """A bad input point, input set, spec or option (shape mismatch, NaN, eps < 0, ...)."""


class MemoryLimitError(OnnxVerifyError):
    """A bound method would need more memory than the configured limit."""


class BackendError(OnnxVerifyError, RuntimeError):
    """A requested array backend is unknown, not installed or has no device."""


class VnnlibError(OnnxVerifyError, ValueError):
    """Malformed or unsupported VNN-LIB input; the message names file, line and token."""


class DataError(OnnxVerifyError, ValueError):
    """A training/evaluation data set is missing, malformed or does not fit the model."""
