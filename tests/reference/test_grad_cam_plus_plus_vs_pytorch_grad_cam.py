"""Grad-CAM++ against pytorch-grad-cam's GradCAMPlusPlus on the same torch models (see _methods.py for
the setup).

- pytorch-grad-cam GradCAMPlusPlus vs grad_cam_plus_plus.                resnet, vgg
  pytorch-grad-cam min-max scales each cam and resizes it with cv2 (INTER_LINEAR), then scales
  again after averaging the layers; explaind returns the un-scaled map. Two comparisons:
  (1) the un-scaled cams at layer resolution: ReLU(get_cam_image(...)) of the library, on the
      activations and gradients it captured, vs explaind with upsample="none";
  (2) the library's final output vs explaind's upsample="none" map put through the library's own
      scale_cam_image(·, (W, H)) then scale_cam_image(·) (what compute_cam_per_layer and
      aggregate_multi_layers do for one layer). Both scaled maps have max 1, so the relative error
      is the largest absolute difference.
  torchvision: see _methods._torchvision_stub (the registry's torchvision wheels are CUDA builds
  that cannot be imported with torch 2.13.0+cpu; GradCAMPlusPlus never calls torchvision).
"""

from __future__ import annotations

import numpy as np
import pytest

from _methods import IMAGE, check, import_pytorch_grad_cam
from explaind.methods.grad_cam_plus_plus import GradCamPlusPlus as XGradCamPlusPlus


@pytest.mark.parametrize("name", IMAGE)
def test_grad_cam_plus_plus(case, xp, summary, name):
    gc = import_pytorch_grad_cam()
    ex, x, xt, target = case(name)
    layer = ex.torch_model.get_submodule(ex.entry.layer_module)
    targets = [gc.ClassifierOutputTarget(target)]
    with gc.GradCAMPlusPlus(model=ex.torch_model, target_layers=[layer]) as cam:
        final = cam(input_tensor=xt, targets=targets)  # [1, H, W], min-max scaled, cv2-resized, scaled
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = cam.activations_and_grads.gradients[0].numpy()
        unscaled = np.maximum(cam.get_cam_image(xt, layer, targets, activations, gradients), 0)  # [1, h, w]
    ex.torch_model.zero_grad(set_to_none=True)  # pytorch-grad-cam calls loss.backward()
    got, params = xp.explain(XGradCamPlusPlus(), {"layer": ex.layer, "upsample": "none"}, ex.in_process, x, target)
    assert params["relu"] is True
    # (1) un-scaled cams at layer resolution
    check(summary, "GradCAMPlusPlus (layer resolution)", name, got.attribution, unscaled[0])
    # (2) the library's output vs explaind's map through the library's scaling and cv2 resize
    width_height = (x.shape[2], x.shape[1])
    ours = gc.scale_cam_image(gc.scale_cam_image(np.float32(got.attribution)[None], width_height))
    check(summary, "GradCAMPlusPlus (scaled, cv2 resize)", name, ours[0], final[0])
