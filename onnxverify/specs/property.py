"""What a parsed VNN-LIB property is: the unsafe set of ``y = f(x)`` as cases (an input box
each, with a disjunction of output constraints), and the test of a concrete pair against it.
The parser (:mod:`.vnnlib`) builds these."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import VnnlibError

__all__ = ["Case", "Property", "is_violated"]


@dataclass
class Case:
    """One input box with a DNF of output constraints.

    x_lower, x_upper: (n_in,) float64.  y_disjuncts: list of ``(A (k, n_out), b (k,))``;
    the case is unsafe iff x is in the box and ``A @ y <= b`` holds for some disjunct.
    """
    x_lower: np.ndarray
    x_upper: np.ndarray
    y_disjuncts: list = field(default_factory=list)


@dataclass
class Property:
    """A parsed VNN-LIB file: unsafe iff some case is unsafe."""
    n_inputs: int
    n_outputs: int
    cases: list
    path: str | None = None

    def check_sizes(self, n_inputs: int, n_outputs: int) -> None:
        """Raise VnnlibError unless the declared sizes equal the network's."""
        where = self.path or "<string>"
        if n_inputs is not None and n_inputs != self.n_inputs:
            raise VnnlibError(f"{where}: property declares {self.n_inputs} inputs (X_*) "
                              f"but the network has {n_inputs}")
        if n_outputs is not None and n_outputs != self.n_outputs:
            raise VnnlibError(f"{where}: property declares {self.n_outputs} outputs (Y_*) "
                              f"but the network has {n_outputs}")


def is_violated(prop, x_flat, y_flat, tol: float = 0.0) -> bool:
    """Does the concrete pair (x (n_in,), y (n_out,)) lie in the unsafe set?

    `prop` is a Property or a single Case; box bounds and rows are relaxed by `tol`.
    """
    x = np.asarray(x_flat, dtype=np.float64).ravel()
    y = np.asarray(y_flat, dtype=np.float64).ravel()
    for case in (prop.cases if isinstance(prop, Property) else [prop]):
        if x.shape != case.x_lower.shape:
            raise ValueError(f"x has {x.size} entries, the property expects "
                             f"{case.x_lower.size}")
        if np.any(x < case.x_lower - tol) or np.any(x > case.x_upper + tol):
            continue
        for A, b in case.y_disjuncts:
            if A.shape[1] != y.size:
                raise ValueError(f"y has {y.size} entries, the property expects {A.shape[1]}")
            if np.all(A @ y <= b + tol):
                return True
    return False
