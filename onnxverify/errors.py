"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


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
