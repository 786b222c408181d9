"""Eigen-Grad-CAM (pytorch-grad-cam `EigenGradCAM`: Eigen-CAM, Muhammad & Yeasin 2020, on the
element-wise product of gradient and activation).

map = ReLU(first principal component of g * A over the layer's positions), the [h * w, K]
matrix of g_k(i, j) A_k(i, j) centred over positions, projected on its first right singular
vector (get_2d_projection; the sign is the SVD's, as there); upsampled as Grad-CAM. One gradient
row. No eigen_smooth: the map is already a projection.
"""

from __future__ import annotations

import numpy as np

from .cam_base import cam_params, first_component
from .grad_cam import GradCam


class EigenGradCam(GradCam):
    name = "eigen_grad_cam"
    title = "Eigen-Grad-CAM"
    reference = "Muhammad & Yeasin 2020, Eigen-CAM; pytorch-grad-cam EigenGradCAM"
    description = "The first principal component of the element-wise product of a layer's gradient and activation."
    params = cam_params(eigen=False)

    def cam_image(self, activation: np.ndarray, gradient: np.ndarray, eigen_smooth: bool) -> np.ndarray:
        return first_component(gradient * activation)
