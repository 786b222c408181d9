"""The methods explaind offers, by request field name (one module per method)."""

from __future__ import annotations

from .activation_maximization import ActivationMaximization
from .base import Method
from .cam import Cam
from .deconvnet import Deconvnet
from .extremal_perturbation import ExtremalPerturbation
from .grad_cam import GradCam
from .grad_cam_plus_plus import GradCamPlusPlus
from .guided_backprop import GuidedBackprop
from .guided_grad_cam import GuidedGradCam
from .input_x_gradient import InputXGradient
from .integrated_gradients import IntegratedGradients
from .kernel_shap import KernelShap
from .lime import Lime
from .linear_shap import LinearShap
from .occlusion import Occlusion
from .rise import Rise
from .saliency import Saliency
from .score_cam import ScoreCam
from .smooth_grad import SmoothGrad
from .tree_shap import TreeShap

METHODS: tuple[type[Method], ...] = (
    Occlusion, Rise, Lime, KernelShap, ExtremalPerturbation, TreeShap, LinearShap,
    Saliency, InputXGradient, SmoothGrad, IntegratedGradients, GuidedBackprop, Deconvnet,
    GradCam, GradCamPlusPlus, GuidedGradCam, ScoreCam, Cam, ActivationMaximization,
)


def all_methods() -> dict[str, Method]:
    return {m.name: m() for m in METHODS}
