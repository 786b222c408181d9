"""Score-CAM against pytorch-grad-cam's ScoreCAM on the reference zoo (every image model).

explaind builds the K masked inputs in the graph (onnxgraph/variants/channel_masks.py) from the
layer's activation and scores them as batched rows; pytorch-grad-cam upsamples in torch and runs the
model 16 masked inputs at a time. Both take the target logit (ClassifierOutputTarget), the softmax
over channels as weights and ReLU(sum_k w_k A_k). Compared: the channel weights, the map at the
layer's resolution (before pytorch-grad-cam's min-max scaling), and the library's final output
against explaind's map put through the library's own scaling and cv2 resize.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _methods import import_pytorch_grad_cam, rel_err
from explaind.methods.score_cam import ScoreCam

TOL = 1e-3
IMAGE_MODELS = ["resnet", "vgg", "mobilenetv2", "senet", "densenet"]


def library_score_cam(ex, xt: torch.Tensor, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights [K], the un-scaled map at the layer's resolution [h, w], the library's output [H, W])."""
    gc = import_pytorch_grad_cam()
    layer = ex.torch_model.get_submodule(ex.entry.layer_module)
    targets = [gc.ClassifierOutputTarget(target)]
    with gc.ScoreCAM(model=ex.torch_model, target_layers=[layer]) as cam:
        final = cam(input_tensor=xt, targets=targets)  # [1, H, W]: min-max scaled, cv2-resized
        activations = cam.activations_and_grads.activations[0].numpy()
        weights = cam.get_cam_weights(xt, layer, targets, activations, None)
        unscaled = np.maximum(cam.get_cam_image(xt, layer, targets, activations, None), 0)
    return weights[0], unscaled[0], final[0]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_score_cam_agrees_with_pytorch_grad_cam(exported, xp, name):
    gc = import_pytorch_grad_cam()
    ex = exported(name)
    x = np.random.default_rng(300 + IMAGE_MODELS.index(name)).standard_normal(
        ex.torch_model.input_shape).astype(np.float32)
    xt = torch.from_numpy(x[None].copy())
    target = 1
    weights, unscaled, final = library_score_cam(ex, xt, target)

    got, params = xp.explain(ScoreCam(), {"layer": ex.layer, "upsample": "none"}, ex.in_process, x, target)
    assert params == {"layer": ex.layer, "relu": True, "upsample": "none", "eigen_smooth": False, "aug_smooth": False}
    channels = weights.shape[0]
    assert got.model_evaluations == 1 + channels  # the prediction (which reads the layer), one row per channel
    assert got.stages == 2
    assert rel_err(got.arrays["channel_weights"], weights) < TOL
    assert got.arrays["channel_weights"].sum() == pytest.approx(1.0, abs=1e-5)
    assert got.attribution.shape == unscaled.shape
    assert rel_err(got.attribution, unscaled) < TOL
    # The library's output vs explaind's map through the library's own scaling and cv2 resize.
    width_height = (x.shape[2], x.shape[1])
    ours = gc.scale_cam_image(gc.scale_cam_image(np.float32(got.attribution)[None], width_height))
    assert rel_err(ours[0], final) < TOL

    # Upsampled (the default): the same map, bilinear with half-pixel centres, at the input's size.
    full, _ = xp.explain(ScoreCam(), {"layer": ex.layer}, ex.in_process, x, target)
    expected = torch.nn.functional.interpolate(torch.from_numpy(np.float32(got.attribution))[None, None],
                                               size=x.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    assert rel_err(full.attribution, expected.numpy()) < 1e-5


def test_score_cam_relu_false_keeps_the_sign(exported, xp):
    ex = exported("resnet")
    x = np.random.default_rng(7).standard_normal(ex.torch_model.input_shape).astype(np.float32)
    on, _ = xp.explain(ScoreCam(), {"layer": ex.layer, "upsample": "none"}, ex.in_process, x, 2)
    off, params = xp.explain(ScoreCam(), {"layer": ex.layer, "upsample": "none", "relu": False}, ex.in_process, x, 2)
    assert params["relu"] is False
    np.testing.assert_allclose(np.maximum(off.attribution, 0), on.attribution, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(on.arrays["channel_weights"], off.arrays["channel_weights"], rtol=1e-6)
