"""Grad-CAM (Selvaraju et al. 2017; Captum `LayerGradCam` with `LayerAttribution.interpolate`).

w_k = mean over (i, j) of d y_c / d A_k(i, j) at a layer A (default: model.yaml layers.cam, else the
last 4-D activation feeding a global pooling); map = ReLU(sum_k w_k A_k), upsampled bilinearly
(half-pixel centres, torch's align_corners=False) to the input size. y_c is the logit by default.
One model evaluation, with the layer's activation and gradient as outputs. The gradient CAMs
(Grad-CAM++...) subclass it and override `layer_weights` alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Settings
from .base import LAYER_GRADIENTS, MethodContext, ModelView, Result, Stages
from .gradient_base import GradientMethod, finish_map, gradient_stage, layer_param, resolve_layer, upsample_param
from .params import Bool


class GradCam(GradientMethod):
    name = "grad_cam"
    title = "Grad-CAM"
    reference = "Selvaraju et al. 2017, Grad-CAM; Captum LayerGradCam"
    description = "A layer's activations weighted by the spatial mean of their gradients, ReLU, upsampled."
    needs = LAYER_GRADIENTS
    kinds = frozenset({"image"})
    params = (
        layer_param(),
        Bool("relu", True, "ReLU of the weighted sum (the paper); false keeps negative evidence"),
        upsample_param(),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        params["layer"] = resolve_layer(params, self.name, model)
        return params

    def layer_weights(self, activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        """[K] channel weights from the layer's activation and gradient, both [K, h, w]."""
        return gradient.mean(axis=(1, 2))

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        grads = yield gradient_stage(ctx, layer=params["layer"])
        cam = np.tensordot(self.layer_weights(grads.layer, grads.layer_grad), grads.layer, axes=1)
        return Result(finish_map(cam, params["relu"], params["upsample"], ctx.model))
