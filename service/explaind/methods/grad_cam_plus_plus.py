"""Grad-CAM++ (Chattopadhyay et al. 2018), with pytorch-grad-cam's closed form.

alpha = g^2 / (2 g^2 + sum_ab A * g^3 + eps) (0 where g = 0), w_k = sum_ij alpha * ReLU(g),
map = ReLU(sum_k w_k A_k), upsampled bilinearly. Unlike pytorch-grad-cam the map is not min-max
scaled (the renderer normalises for display); eps = 1e-6 as there.
"""

from __future__ import annotations

import numpy as np

from .grad_cam import GradCam

EPS = 1e-6


class GradCamPlusPlus(GradCam):
    name = "grad_cam_plus_plus"
    title = "Grad-CAM++"
    reference = "Chattopadhyay et al. 2018, Grad-CAM++; pytorch-grad-cam GradCAMPlusPlus"
    description = "Grad-CAM with pixel-wise weights from second and third powers of the gradient."

    def layer_weights(self, activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        g2 = gradient * gradient
        g3 = g2 * gradient
        sums = activation.sum(axis=(1, 2))[:, None, None]
        alpha = np.where(gradient != 0, g2 / (2 * g2 + sums * g3 + EPS), 0.0)
        return (alpha * np.maximum(gradient, 0)).sum(axis=(1, 2))
