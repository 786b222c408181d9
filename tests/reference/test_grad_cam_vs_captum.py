"""Grad-CAM against Captum's LayerGradCam on the same torch models (see _methods.py for the setup).

- Captum LayerGradCam(relu_attributions=True) on the zoo's Grad-CAM layer, then
  LayerAttribution.interpolate(..., (32, 32), "bilinear") vs grad_cam (default bilinear); also the
  un-upsampled map vs grad_cam upsample="none".                          resnet, vgg
"""

from __future__ import annotations

import pytest
from captum.attr import LayerAttribution, LayerGradCam

import zoo
from _methods import IMAGE, check
from explaind.methods.grad_cam import GradCam as XGradCam

# Captum's notices ("Input Tensor 0 did not already require gradients", "Setting backward hooks on ReLU").
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")


@pytest.mark.parametrize("name", IMAGE)
def test_grad_cam(case, xp, summary, name):
    ex, x, xt, target = case(name)
    assert zoo.module_of_node(zoo.producer_of(ex.onnx_model, ex.layer)) == ex.entry.layer_module  # same tensor
    layer = ex.torch_model.get_submodule(ex.entry.layer_module)
    raw = LayerGradCam(ex.torch_model, layer).attribute(xt, target=target, relu_attributions=True)
    ref = LayerAttribution.interpolate(raw, tuple(x.shape[1:]), "bilinear")[0, 0].detach().numpy()
    got, params = xp.explain(XGradCam(), {"layer": ex.layer}, ex.in_process, x, target)
    assert params["upsample"] == "bilinear" and params["relu"] is True
    check(summary, "LayerGradCam+interpolate(bilinear)", name, got.attribution, ref)
    small, _ = xp.explain(XGradCam(), {"layer": ex.layer, "upsample": "none"}, ex.in_process, x, target)
    check(summary, "LayerGradCam (layer resolution)", name, small.attribution, raw[0, 0].detach().numpy())
