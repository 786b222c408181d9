"""Guided Backpropagation and Deconvnet against Captum's GuidedBackprop and Deconvolution on the same
torch models (see _methods.py for the setup).

- Captum GuidedBackprop vs guided_backprop, Captum Deconvolution vs deconvnet.   resnet, vgg
  Both change only the backward pass of ReLU: guided backprop passes a gradient where the input and
  the gradient are positive, deconvnet where the gradient is. Captum modifies the backward pass of
  nn.ReLU modules only; explaind also modifies ReLU6 (ONNX Clip(0, 6)). ResNet- and VGG-style use
  nn.ReLU only (one module per call), so both apply the rule to the same nodes; MobileNetV2-style
  (ReLU6) would differ by convention, not by a bug, and is not used here (test_autodiff_vs_autograd
  checks explaind's ReLU6 rules).
"""

from __future__ import annotations

import pytest
from captum.attr import Deconvolution, GuidedBackprop

from _methods import IMAGE, check
from explaind.methods.deconvnet import Deconvnet
from explaind.methods.guided_backprop import GuidedBackprop as XGuidedBackprop

# Captum's notices ("Input Tensor 0 did not already require gradients", "Setting backward hooks on ReLU").
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

PAIRS = {"guided_backprop": (GuidedBackprop, XGuidedBackprop), "deconvnet": (Deconvolution, Deconvnet)}


@pytest.mark.parametrize("method", sorted(PAIRS))
@pytest.mark.parametrize("name", IMAGE)
def test_modified_relu_backprop(case, xp, summary, name, method):
    """ResNet- and VGG-style have only nn.ReLU activations: Captum's hooks and explaind's modified
    Relu rule see the same nodes (see the module docstring on ReLU6)."""
    ex, x, xt, target = case(name)
    assert not ex.entry.has_relu6
    library, ours = PAIRS[method]
    ref = library(ex.torch_model).attribute(xt, target=target)[0].detach().numpy()
    got, params = xp.explain(ours(), {}, ex.in_process, x, target)
    assert params.get("channel_reduction", "none") == "none"
    check(summary, library.__name__, name, got.attribution, ref)
