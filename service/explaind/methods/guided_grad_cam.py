"""Guided Grad-CAM (Selvaraju et al. 2017; Captum `GuidedGradCam`).

Guided backpropagation (per channel) times the Grad-CAM map upsampled with nearest-neighbour
interpolation to the input size (Captum's default). Two jobs run concurrently through the engine:
the plain gradient at the layer, and the guided gradient at the input.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

import numpy as np

from ..config import Settings
from .base import MethodContext, MethodResult, ModelView, Parameter
from .grad_cam import GradCam
from .gradient_base import CHANNEL_REDUCTIONS, choice_param, reduce_channels, resolve_layer
from .guided_backprop import GuidedBackprop


class GuidedGradCam(GradCam):
    name = "guided_grad_cam"
    title = "Guided Grad-CAM"
    reference = "Selvaraju et al. 2017, Grad-CAM; Captum GuidedGradCam"
    description = "Guided backpropagation times the upsampled Grad-CAM map."
    rules_needed = ("plain", "guided")
    parameters = (
        GradCam.parameters[0],
        Parameter("upsample", "string", "nearest", "nearest | bilinear"),
        Parameter("channel_reduction", "string", "none", "none | max | sum | mean"),
    )

    def resolve(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        # No "none": the map multiplies the input-sized guided gradient, so it is always upsampled.
        return {"layer": resolve_layer(given, self.name, model), "relu": True,
                "upsample": choice_param(given, self.name, "upsample", "nearest", ("nearest", "bilinear")),
                "channel_reduction": choice_param(given, self.name, "channel_reduction", "none", CHANNEL_REDUCTIONS)}

    async def explain(self, params: dict[str, Any], ctx: MethodContext) -> MethodResult:
        cam_params = {**params, "relu": True}
        cam_result, guided = await asyncio.gather(GradCam.explain(self, cam_params, ctx),
                                                  GuidedBackprop().explain({"channel_reduction": "none"}, ctx))
        channel_axis = ctx.model.signature.channel_axis - 1
        product = guided.attribution * np.expand_dims(cam_result.attribution, channel_axis)
        return MethodResult(
            attribution=np.asarray(reduce_channels(product, params["channel_reduction"], ctx.model), np.float32),
            model_evaluations=cam_result.model_evaluations + guided.model_evaluations,
            batches=cam_result.batches + guided.batches,
            queue_seconds=max(cam_result.queue_seconds, guided.queue_seconds),
            compute_seconds=cam_result.compute_seconds + guided.compute_seconds)
