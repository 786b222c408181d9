"""XGrad-CAM (Fu et al. 2020, "Axiom-based Grad-CAM"; pytorch-grad-cam `XGradCAM`).

w_k = sum_ij g_k(i, j) A_k(i, j) / (sum_ij A_k(i, j) + 1e-7), g the gradient of the target score
(the logit by default) at the layer A; map = ReLU(sum_k w_k A_k), upsampled as Grad-CAM. One
gradient row.
"""

from __future__ import annotations

import numpy as np

from .grad_cam import GradCam

EPS = 1e-7  # pytorch-grad-cam's


class XGradCam(GradCam):
    name = "xgrad_cam"
    title = "XGrad-CAM"
    reference = "Fu et al. 2020, Axiom-based Grad-CAM; pytorch-grad-cam XGradCAM"
    description = "Grad-CAM with each channel's gradient averaged under its activation's weights."

    def layer_weights(self, activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        sums = activation.sum(axis=(1, 2))
        return (gradient * activation).sum(axis=(1, 2)) / (sums + EPS)
