"""Guided Grad-CAM against Captum's GuidedGradCam on the same torch models (see _methods.py for the
setup).

- Captum GuidedGradCam (default interpolate_mode "nearest") vs guided_grad_cam.  resnet, vgg
"""

from __future__ import annotations

import pytest
from captum.attr import GuidedGradCam

from _methods import IMAGE, check
from explaind.methods.guided_grad_cam import GuidedGradCam as XGuidedGradCam

# Captum's notices ("Input Tensor 0 did not already require gradients", "Setting backward hooks on ReLU").
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")


@pytest.mark.parametrize("name", IMAGE)
def test_guided_grad_cam(case, xp, summary, name):
    ex, x, xt, target = case(name)
    layer = ex.torch_model.get_submodule(ex.entry.layer_module)
    ref = GuidedGradCam(ex.torch_model, layer).attribute(xt, target=target)[0].detach().numpy()  # "nearest"
    got, params = xp.explain(XGuidedGradCam(), {"layer": ex.layer}, ex.in_process, x, target)
    assert params["upsample"] == "nearest" and params.get("channel_reduction", "none") == "none"
    check(summary, "GuidedGradCam(nearest)", name, got.attribution, ref)
