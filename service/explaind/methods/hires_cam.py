"""HiResCAM (Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks"; pytorch-grad-cam `HiResCAM`).

map = ReLU(sum_k g_k * A_k), the element-wise product of the layer's gradient and activation summed
over channels (for a model ending in global average pooling and a linear layer, CAM up to the pooling's
1 / (h w)), upsampled as Grad-CAM. One gradient row. With eigen_smooth the paper's faithfulness no
longer holds (pytorch-grad-cam warns the same).
"""

from __future__ import annotations

import numpy as np

from .cam_base import first_component
from .grad_cam import GradCam


class HiResCam(GradCam):
    name = "hires_cam"
    title = "HiResCAM"
    reference = "Draelos & Carin 2020, HiResCAM; pytorch-grad-cam HiResCAM"
    description = "The element-wise product of a layer's gradient and activation, summed over channels."

    def cam_image(self, activation: np.ndarray, gradient: np.ndarray, eigen_smooth: bool) -> np.ndarray:
        product = gradient * activation
        return first_component(product) if eigen_smooth else product.sum(axis=0)
