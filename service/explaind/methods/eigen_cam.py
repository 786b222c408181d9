"""Eigen-CAM (Muhammad & Yeasin 2020, "Eigen-CAM: Class Activation Map using Principal Components";
pytorch-grad-cam `EigenCAM`).

map = ReLU(first principal component of the layer's activation A over its positions): the
[h * w, K] matrix of A centred over positions, projected on its first right singular vector
(get_2d_projection; the sign is the SVD's, as there); upsampled bilinearly. Class-agnostic and
gradient-free: the prediction's pass reads the layer, no more rows (aug_smooth: five predictions
of the augmented inputs). No eigen_smooth: the map is already a projection.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import LAYER_ACTIVATIONS, MethodContext
from .cam_base import BaseCam, LayerMap, MapStages, cam_params, first_component


class EigenCam(BaseCam):
    name = "eigen_cam"
    title = "Eigen-CAM"
    reference = "Muhammad & Yeasin 2020, Eigen-CAM; pytorch-grad-cam EigenCAM"
    description = "The first principal component of a layer's activations (no gradients, class-agnostic)."
    needs = LAYER_ACTIVATIONS
    params = cam_params(eigen=False)
    reads_prediction_layer = True

    def map_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return 0

    def layer_map(self, x: np.ndarray, params: dict[str, Any], ctx: MethodContext) -> MapStages:
        activation = yield from self.activation(x, params, ctx)
        return LayerMap(first_component(activation))
