"""Backward rules, one module per operator family; importing this package fills the rule table."""

from . import activations, elementwise, linear, pooling, reduce, shape
from . import deep_lift, excitation, rect_grad  # rule variants (after the plain rules they fall back to)

__all__ = ["activations", "deep_lift", "elementwise", "excitation", "linear", "pooling", "rect_grad", "reduce", "shape"]
