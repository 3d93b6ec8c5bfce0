"""Presentation: text tables, method comparisons and plots (no computation of bounds here)."""
from .tables import format_table

__all__ = ["format_table"]
