"""Backward rules, one module per operator family; importing this package fills the rule table."""

from . import activations, elementwise, linear, lrp_linear, lrp_propagation, pooling, reduce, shape

__all__ = ["activations", "elementwise", "linear", "lrp_linear", "lrp_propagation", "pooling", "reduce", "shape"]
