"""What is asked: input sets (boxes, l_p balls), output specs (rows ``C y``), VNN-LIB properties."""
from .input_sets import Box, InputSet, LinfBall, LpBall, make_input_set
from .output import apply_spec_to_interval, check_spec, margin_spec
from .vnnlib import Case, Property, is_violated, parse_vnnlib, parse_vnnlib_string

__all__ = ["Box", "Case", "InputSet", "LinfBall", "LpBall", "Property", "apply_spec_to_interval", "check_spec",
           "is_violated", "make_input_set", "margin_spec", "parse_vnnlib", "parse_vnnlib_string"]
