"""Backward rules, one module per operator family; importing this package fills the rule table."""

from . import activations, elementwise, linear, pooling, reduce, shape
from . import deep_lift, excitation, lrp_linear, lrp_propagation, rect_grad  # rule variants (after the plain rules)

__all__ = ["activations", "deep_lift", "elementwise", "excitation", "linear", "lrp_linear", "lrp_propagation",
           "pooling", "rect_grad", "reduce", "shape"]
