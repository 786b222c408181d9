"""Reverse-mode autodiff written as ONNX nodes: gradients that onnxruntime alone computes.

``differentiate(model, output, wrt)`` returns the model plus a seed input shaped like `output` and
one gradient output per tensor in `wrt` (``explaind::grad::<name>``): d sum(seed * output) / d t.
Rule variants: "plain" (the gradient), "guided" (guided backpropagation) and "deconvnet", which
differ only at Relu (and Clip with min 0, ReLU6); "deep_lift", "rect_grad", "excitation" and
"excitation_contrastive" (rules/deep_lift.py, rect_grad.py, excitation.py); "lrp" (rules/lrp_linear.py,
lrp_propagation.py), whose rule per linear layer a composite chooses per node (lrp.py, the
`node_rules` argument). ``unsupported_operators`` lists what blocks a variant.
"""

from .core import differentiate, unsupported_operators
from .errors import UnsupportedOperator
from .registry import NON_DIFFERENTIABLE, RULES, VARIANTS, register

__all__ = [
    "NON_DIFFERENTIABLE",
    "RULES",
    "VARIANTS",
    "UnsupportedOperator",
    "differentiate",
    "register",
    "supported_operators",
    "unsupported_operators",
]


def supported_operators(variant: str = "plain") -> list[str]:
    """Operator types (default domain) with a backward rule for `variant`."""
    ops = {op for (v, domain, op) in RULES if v in ("plain", variant) and domain == ""}
    return sorted(ops)
