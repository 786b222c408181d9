"""Saliency against Captum's Saliency on the same torch models (see _methods.py for the setup).

- Captum Saliency(abs=True) vs saliency postprocess=absolute, channel_reduction=none;
  Saliency(abs=False) vs postprocess=raw (per channel).                  resnet, vgg, mlp
"""

from __future__ import annotations

import pytest
from captum.attr import Saliency

from _methods import ALL, check
from explaind.methods.saliency import Saliency as XSaliency

# Captum's notices ("Input Tensor 0 did not already require gradients", "Setting backward hooks on ReLU").
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("absolute", [True, False], ids=["abs", "raw"])
def test_saliency(case, xp, summary, name, absolute):
    ex, x, xt, target = case(name)
    ref = Saliency(ex.torch_model).attribute(xt, target=target, abs=absolute)[0].detach().numpy()
    got, params = xp.explain(XSaliency(), {"postprocess": "absolute" if absolute else "raw",
                                           "channel_reduction": "none"}, ex.in_process, x, target)
    assert got.attribution.shape == x.shape and got.model_evaluations == 1 + 1  # the prediction, the gradient
    check(summary, f"Saliency(abs={absolute})", name, got.attribution, ref)
