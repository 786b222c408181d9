"""Input x Gradient against Captum's InputXGradient on the same torch models (see _methods.py for the
setup).

- Captum InputXGradient vs input_x_gradient (per channel).               resnet, vgg, mlp
"""

from __future__ import annotations

import pytest
from captum.attr import InputXGradient

from _methods import ALL, check
from explaind.methods.input_x_gradient import InputXGradient as XInputXGradient

# Captum's notices ("Input Tensor 0 did not already require gradients", "Setting backward hooks on ReLU").
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")


@pytest.mark.parametrize("name", ALL)
def test_input_x_gradient(case, xp, summary, name):
    ex, x, xt, target = case(name)
    ref = InputXGradient(ex.torch_model).attribute(xt, target=target)[0].detach().numpy()
    got, params = xp.explain(XInputXGradient(), {}, ex.in_process, x, target)
    assert params.get("channel_reduction", "none") == "none"
    check(summary, "InputXGradient", name, got.attribution, ref)
