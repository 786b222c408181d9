"""The CAM family against pytorch-grad-cam 1.5.7 on the same torch models (see _methods.py for the
setup and the torchvision stub): XGradCAM, LayerCAM, HiResCAM, GradCAMElementWise, EigenCAM,
EigenGradCAM, AblationCAM vs xgrad_cam, layer_cam, hires_cam, grad_cam_element_wise, eigen_cam,
eigen_grad_cam, ablation_cam; and the eigen_smooth and aug_smooth options (on Grad-CAM, LayerCAM and
Ablation-CAM).

As test_grad_cam_plus_plus_vs_pytorch_grad_cam.py: (1) the un-scaled map at the layer's resolution,
ReLU(get_cam_image(...)) of the library on the activations and gradients it captured, vs explaind with
upsample="none"; (2) the library's final output vs explaind's map through the library's own
scale_cam_image with its cv2 resize. With aug_smooth explaind's map is already scaled and upsampled
(bilinear, half-pixel centres, cv2 INTER_LINEAR's), so it is compared with the library's output as is.
Relative error: max |difference| / max |reference| (1e-3). The layers are ReLU outputs (minimum 0), so
Ablation-CAM ablates with 0 in both; on a layer with negative values pytorch-grad-cam's AblationLayer
lowers each row of a batch below the previous one (min - 1e7, min - 2e7, ...: it takes the minimum of
the batch it is modifying), which explaind does not reproduce (every row min - 1e7).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _methods import check, import_pytorch_grad_cam
from explaind.methods.ablation_cam import AblationCam
from explaind.methods.eigen_cam import EigenCam
from explaind.methods.eigen_grad_cam import EigenGradCam
from explaind.methods.grad_cam import GradCam
from explaind.methods.grad_cam_plus_plus import GradCamPlusPlus
from explaind.methods.grad_cam_element_wise import GradCamElementWise
from explaind.methods.hires_cam import HiResCam
from explaind.methods.layer_cam import LayerCam
from explaind.methods.score_cam import ScoreCam
from explaind.methods.xgrad_cam import XGradCam

PAIRS = {"XGradCAM": XGradCam, "LayerCAM": LayerCam, "HiResCAM": HiResCam, "GradCAMElementWise": GradCamElementWise,
         "EigenCAM": EigenCam, "EigenGradCAM": EigenGradCam, "AblationCAM": AblationCam}
MODELS = ["resnet", "vgg", "senet"]
TARGETS = {"resnet": 3, "vgg": 2, "senet": 1}  # classes whose maps are not all zero on these inputs


@pytest.fixture
def inputs(exported, summary, _module_time):
    """inputs(name) -> (Exported, x, x as a [1, ...] tensor, target): standard normal, per model."""

    def get(name: str):
        ex = exported(name)
        x = np.random.default_rng(500 + MODELS.index(name)).standard_normal(ex.torch_model.input_shape)
        x = x.astype(np.float32)
        return ex, x, torch.from_numpy(x[None].copy()), TARGETS[name]

    return get


def library_maps(gc, cls, ex, xt, target, module: str = "", **call):
    """(the library's un-scaled map at the layer [h, w], its final output [H, W])."""
    layer = ex.torch_model.get_submodule(module or ex.entry.layer_module)
    targets = [gc.ClassifierOutputTarget(target)]
    with cls(model=ex.torch_model, target_layers=[layer]) as cam:
        final = cam(input_tensor=xt, targets=targets, **call)
        activations = cam.activations_and_grads.activations[0].numpy()
        gradients = (cam.activations_and_grads.gradients[0].numpy() if cam.activations_and_grads.gradients
                     else None)
        unscaled = None
        if not call.get("aug_smooth"):
            unscaled = np.maximum(cam.get_cam_image(xt, layer, targets, activations, gradients,
                                                    call.get("eigen_smooth", False)), 0)[0]
    ex.torch_model.zero_grad(set_to_none=True)
    return unscaled, final[0]


def scaled(gc, attribution: np.ndarray, x: np.ndarray) -> np.ndarray:
    width_height = (x.shape[2], x.shape[1])
    return gc.scale_cam_image(gc.scale_cam_image(np.float32(attribution)[None], width_height))[0]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("library_name", list(PAIRS))
def test_cam_family(inputs, xp, summary, name, library_name):
    gc = import_pytorch_grad_cam()
    ex, x, xt, target = inputs(name)
    unscaled, final = library_maps(gc, getattr(gc, library_name), ex, xt, target)
    method = PAIRS[library_name]()
    got, params = xp.explain(method, {"layer": ex.layer, "upsample": "none"}, ex.in_process, x, target)
    assert params["relu"] is True and params["aug_smooth"] is False
    check(summary, f"{library_name} (layer resolution)", name, got.attribution, unscaled)
    check(summary, f"{library_name} (scaled, cv2 resize)", name, scaled(gc, got.attribution, x), final)
    if library_name == "AblationCAM":
        assert got.model_evaluations == 1 + got.arrays["channel_weights"].shape[0] + 1  # prediction, K, unablated
    if library_name == "EigenCAM":
        assert got.model_evaluations == 1  # the prediction reads the layer


@pytest.mark.parametrize("name", ["resnet", "vgg"])
@pytest.mark.parametrize("library_name, ours", [("GradCAM", GradCam), ("LayerCAM", LayerCam), ("AblationCAM", AblationCam),
                                                ("GradCAMPlusPlus", GradCamPlusPlus), ("ScoreCAM", ScoreCam)])
def test_eigen_smooth(inputs, xp, summary, name, library_name, ours):
    gc = import_pytorch_grad_cam()
    ex, x, xt, target = inputs(name)
    unscaled, final = library_maps(gc, getattr(gc, library_name), ex, xt, target, eigen_smooth=True)
    given = {"layer": ex.layer, "upsample": "none", "eigen_smooth": True}
    got, _ = xp.explain(ours(), given, ex.in_process, x, target)
    check(summary, f"{library_name} eigen_smooth (layer)", name, got.attribution, unscaled)
    check(summary, f"{library_name} eigen_smooth (scaled)", name, scaled(gc, got.attribution, x), final)


@pytest.mark.parametrize("name", ["resnet", "vgg"])
@pytest.mark.parametrize("library_name, ours", [("GradCAM", GradCam), ("HiResCAM", HiResCam), ("EigenCAM", EigenCam),
                                                ("AblationCAM", AblationCam), ("ScoreCAM", ScoreCam)])
def test_aug_smooth(inputs, xp, summary, name, library_name, ours):
    gc = import_pytorch_grad_cam()
    ex, x, xt, target = inputs(name)
    _, final = library_maps(gc, getattr(gc, library_name), ex, xt, target, aug_smooth=True)
    got, params = xp.explain(ours(), {"layer": ex.layer, "aug_smooth": True}, ex.in_process, x, target)
    assert params["upsample"] == "bilinear"
    assert got.attribution.shape == final.shape
    check(summary, f"{library_name} aug_smooth", name, got.attribution, final)


def test_ablation_cam_inside_a_residual_block(inputs, xp, summary):
    """The layer block2.relu1 is bypassed by block2's shortcut: the ablated rows run the model's tail
    from the layer and the shortcut from the input (pytorch-grad-cam swaps the module for its
    AblationLayer and reruns the whole model)."""
    import zoo

    gc = import_pytorch_grad_cam()
    ex, x, xt, target = inputs("resnet")
    tensor = next(n.output[0] for n in ex.onnx_model.graph.node
                  if n.op_type == "Relu" and zoo.module_of_node(n) == "block2.relu1")
    unscaled, final = library_maps(gc, gc.AblationCAM, ex, xt, target, module="block2.relu1")
    got, _ = xp.explain(AblationCam(), {"layer": tensor, "upsample": "none"}, ex.in_process, x, target)
    check(summary, "AblationCAM inner layer (layer)", "resnet", got.attribution, unscaled)
    check(summary, "AblationCAM inner layer (scaled)", "resnet", scaled(gc, got.attribution, x), final)
