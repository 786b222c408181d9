"""Grad-CAM element-wise (pytorch-grad-cam `GradCAMElementWise`).

map = ReLU(sum_k ReLU(g_k * A_k)): HiResCAM with each element's product clipped at zero before the
sum over channels (g the target score's gradient at the layer A; the logit by default), upsampled
as Grad-CAM. One gradient row.
"""

from __future__ import annotations

import numpy as np

from .cam_base import first_component
from .grad_cam import GradCam


class GradCamElementWise(GradCam):
    name = "grad_cam_element_wise"
    title = "Grad-CAM element-wise"
    reference = "pytorch-grad-cam GradCAMElementWise (Gildenblat et al.)"
    description = "The positive part of the element-wise product of a layer's gradient and activation, summed."

    def cam_image(self, activation: np.ndarray, gradient: np.ndarray, eigen_smooth: bool) -> np.ndarray:
        product = np.maximum(gradient * activation, 0)
        return first_component(product) if eigen_smooth else product.sum(axis=0)
