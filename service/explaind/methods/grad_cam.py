"""Grad-CAM (Selvaraju et al. 2017; Captum `LayerGradCam` with `LayerAttribution.interpolate`).

w_k = mean over (i, j) of d y_c / d A_k(i, j) at a layer A (default: model.yaml layers.cam, else the
last 4-D activation feeding a global pooling); map = ReLU(sum_k w_k A_k), upsampled bilinearly
(half-pixel centres, torch's align_corners=False) to the input size. y_c is the logit by default.
One model evaluation, with the layer's activation and gradient as outputs.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import Settings
from .base import MethodContext, ModelView, Parameter, Reducer
from .gradient_base import LAYER_GRADIENTS, GradientMethod, GradientPlan, choice_param, resolve_layer, upsample


class GradCam(GradientMethod):
    name = "grad_cam"
    title = "Grad-CAM"
    reference = "Selvaraju et al. 2017, Grad-CAM; Captum LayerGradCam"
    description = "A layer's activations weighted by the spatial mean of their gradients, ReLU, upsampled."
    needs = LAYER_GRADIENTS
    kinds = frozenset({"image"})
    parameters = (
        Parameter("layer", "string", "model.yaml layers.cam, else the last 4-D activation before global pooling",
                  "tensor name of the layer (GetModel lists them)"),
        Parameter("relu", "bool", "true", "ReLU of the weighted sum (the paper); false keeps negative evidence"),
        Parameter("upsample", "string", "bilinear", "bilinear | nearest | none (layer resolution)"),
    )

    def resolve(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        return {"layer": resolve_layer(given, self.name, model), "relu": bool(given.get("relu", True)),
                "upsample": choice_param(given, self.name, "upsample", "bilinear", ("bilinear", "nearest", "none"))}

    def gradient_plan(self, params: dict[str, Any], ctx: MethodContext) -> GradientPlan:
        return GradientPlan(layer=params["layer"])

    def layer_weights(self, activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        """[K] channel weights from the layer's activation and gradient, both [K, h, w]."""
        return gradient.mean(axis=(1, 2))

    def cam(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> np.ndarray:
        activation, gradient = reducer.layer, reducer.layer_grad  # type: ignore[attr-defined]
        cam = np.tensordot(self.layer_weights(activation, gradient), activation, axes=1)
        if params["relu"]:
            cam = np.maximum(cam, 0)
        if params["upsample"] == "none":
            return cam
        return upsample(cam, ctx.model.signature.spatial_shape, params["upsample"])

    def finish(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> np.ndarray:
        return self.cam(params, ctx, reducer)
