"""Guided Grad-CAM (Selvaraju et al. 2017; Captum `GuidedGradCam`).

Guided backpropagation (per channel) times the Grad-CAM map upsampled with nearest-neighbour
interpolation to the input size (Captum's default). Two stages run concurrently through the engine:
the plain gradient at the layer, and the guided gradient at the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import MethodContext, Result, Stages
from .grad_cam import GradCam
from .gradient_base import channel_reduction, finish_map, gradient_stage, layer_param, reduce_channels, upsample_param


class GuidedGradCam(GradCam):
    name = "guided_grad_cam"
    title = "Guided Grad-CAM"
    reference = "Selvaraju et al. 2017, Grad-CAM; Captum GuidedGradCam"
    description = "Guided backpropagation times the upsampled Grad-CAM map."
    rules_needed = ("plain", "guided")
    # No "none": the map multiplies the input-sized guided gradient, so it is always upsampled.
    params = (layer_param(), upsample_param("nearest", ("nearest", "bilinear")), channel_reduction("none"))

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return 2  # Grad-CAM's layer gradient and guided backprop's input gradient

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        cam_grads, guided = yield [gradient_stage(ctx, layer=params["layer"]), gradient_stage(ctx, rule="guided")]
        cam = np.tensordot(self.layer_weights(cam_grads.layer, cam_grads.layer_grad), cam_grads.layer, axes=1)
        cam = finish_map(cam, True, params["upsample"], ctx.model)
        product = guided.total * np.expand_dims(cam, ctx.model.signature.channel_axis - 1)
        return Result(reduce_channels(product, params.get("channel_reduction"), ctx.model))
