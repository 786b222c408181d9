"""LayerCAM (Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for
Localization"; pytorch-grad-cam `LayerCAM`).

map = ReLU(sum_k ReLU(g_k) * A_k), element-wise: each position weighted by its own positive
gradient (g the target score's gradient at the layer A; the logit by default), upsampled as
Grad-CAM. One gradient row.
"""

from __future__ import annotations

import numpy as np

from .cam_base import first_component
from .grad_cam import GradCam


class LayerCam(GradCam):
    name = "layer_cam"
    title = "LayerCAM"
    reference = "Jiang et al. 2021, LayerCAM; pytorch-grad-cam LayerCAM"
    description = "A layer's activations weighted position by position by their positive gradients."

    def cam_image(self, activation: np.ndarray, gradient: np.ndarray, eigen_smooth: bool) -> np.ndarray:
        weighted = np.maximum(gradient, 0) * activation
        return first_component(weighted) if eigen_smooth else weighted.sum(axis=0)
