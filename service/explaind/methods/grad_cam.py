"""Grad-CAM (Selvaraju et al. 2017; Captum `LayerGradCam` with `LayerAttribution.interpolate`).

w_k = mean over (i, j) of d y_c / d A_k(i, j) at a layer A (default: model.yaml layers.cam, else the
last 4-D activation feeding a global pooling); map = ReLU(sum_k w_k A_k), upsampled bilinearly
(half-pixel centres, torch's align_corners=False) to the input size. y_c is the logit by default.
One model evaluation, with the layer's activation and gradient as outputs. The gradient CAMs
subclass it and override `layer_weights` (Grad-CAM++, XGrad-CAM) or `cam_image` (LayerCAM,
HiResCAM...) alone; eigen_smooth and aug_smooth as every CAM (methods/cam_base.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import MethodContext
from .cam_base import BaseCam, LayerMap, MapStages, weighted_map
from .gradient_base import gradient_stage


class GradCam(BaseCam):
    name = "grad_cam"
    title = "Grad-CAM"
    reference = "Selvaraju et al. 2017, Grad-CAM; Captum LayerGradCam"
    description = "A layer's activations weighted by the spatial mean of their gradients, ReLU, upsampled."

    def layer_weights(self, activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        """[K] channel weights from the layer's activation and gradient, both [K, h, w]."""
        return gradient.mean(axis=(1, 2))

    def cam_image(self, activation: np.ndarray, gradient: np.ndarray, eigen_smooth: bool) -> np.ndarray:
        """The map [h, w] (before ReLU): sum_k w_k A_k (pytorch-grad-cam get_cam_image)."""
        return weighted_map(self.layer_weights(activation, gradient), activation, eigen_smooth)

    def layer_map(self, x: np.ndarray, params: dict[str, Any], ctx: MethodContext) -> MapStages:
        grads = yield gradient_stage(ctx, layer=params["layer"], constants={"x0": x})
        return LayerMap(self.cam_image(grads.layer, grads.layer_grad, bool(params.get("eigen_smooth"))))
