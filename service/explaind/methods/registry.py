"""The methods explaind offers, by request field name (one module per method)."""

from __future__ import annotations

from .activation_maximization import ActivationMaximization
from .ablation_cam import AblationCam
from .aggregated import Aggregated
from .base import Method
from .blur_ig import BlurIg
from .cam import Cam
from .deconvnet import Deconvnet
from .deep_lift import DeepLift
from .deep_lift_shap import DeepLiftShap
from .excitation_backprop import ExcitationBackprop
from .eigen_cam import EigenCam
from .eigen_grad_cam import EigenGradCam
from .extremal_perturbation import ExtremalPerturbation
from .feature_maps import FeatureMaps
from .grad_cam import GradCam
from .grad_cam_element_wise import GradCamElementWise
from .grad_cam_plus_plus import GradCamPlusPlus
from .guided_backprop import GuidedBackprop
from .guided_grad_cam import GuidedGradCam
from .guided_ig import GuidedIg
from .hires_cam import HiResCam
from .input_x_gradient import InputXGradient
from .integrated_gradients import IntegratedGradients
from .kernel_shap import KernelShap
from .layer_cam import LayerCam
from .lime import Lime
from .linear_shap import LinearShap
from .lrp import Lrp
from .meaningful_perturbation import MeaningfulPerturbation
from .occlusion import Occlusion
from .rect_grad import RectGrad
from .rise import Rise
from .saliency import Saliency
from .score_cam import ScoreCam
from .smooth_grad import SmoothGrad
from .smooth_grad_cam_plus_plus import SmoothGradCamPlusPlus
from .tree_shap import TreeShap
from .xgrad_cam import XGradCam
from .xrai import Xrai

METHODS: tuple[type[Method], ...] = (
    Occlusion, Rise, Lime, KernelShap, ExtremalPerturbation, TreeShap, LinearShap,
    Saliency, InputXGradient, SmoothGrad, IntegratedGradients, GuidedBackprop, Deconvnet,
    GradCam, GradCamPlusPlus, GuidedGradCam, ScoreCam, Cam,
    Lrp, DeepLift, DeepLiftShap, RectGrad, ExcitationBackprop,
    XGradCam, LayerCam, HiResCam, GradCamElementWise, EigenCam, EigenGradCam, AblationCam, SmoothGradCamPlusPlus,
    FeatureMaps,
    Xrai, GuidedIg, BlurIg, MeaningfulPerturbation, Aggregated, ActivationMaximization,
)


def all_methods() -> dict[str, Method]:
    return {m.name: m() for m in METHODS}
