"""CAM against its closed form on the reference zoo's global-average-pooling models.

For y_c = sum_k W[c, k] mean(A_k) + b_c, CAM_c = sum_k W[c, k] A_k: computed here from the torch
model (a forward hook for A, the Linear layer's weight for W), so both the head's weights explaind
reads from the ONNX graph and the activation it reads from its prediction pass are checked. The map's
mean plus the bias is the logit (the decomposition CAM rests on). VGG (max pool, flatten, three
linear layers) has no such head and is refused with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _methods import rel_err
from explaind.config import Settings
from explaind.errors import FailedPrecondition, InvalidArgument
from explaind.methods.cam import Cam

GAP_MODELS = ["resnet", "mobilenetv2", "senet", "densenet"]


def torch_activation_and_logits(ex, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seen = []
    handle = ex.torch_model.get_submodule(ex.entry.layer_module).register_forward_hook(
        lambda module, inputs, output: seen.append(output.detach().numpy()[0]))
    try:
        with torch.no_grad():
            logits = ex.torch_model(torch.from_numpy(x[None].copy())).numpy()[0]
    finally:
        handle.remove()
    return seen[-1].astype(np.float64), logits.astype(np.float64)


@pytest.mark.parametrize("name", GAP_MODELS)
def test_cam_equals_its_closed_form(exported, xp, name):
    ex = exported(name)
    x = np.random.default_rng(500 + GAP_MODELS.index(name)).standard_normal(
        ex.torch_model.input_shape).astype(np.float32)
    activation, logits = torch_activation_and_logits(ex, x)
    fc = ex.torch_model.fc
    weight, bias = fc.weight.detach().numpy().astype(np.float64), fc.bias.detach().numpy().astype(np.float64)
    for target in range(weight.shape[0]):
        expected = np.tensordot(weight[target], activation, axes=1)
        got, params = xp.explain(Cam(), {"upsample": "none"}, ex.in_process, x, target)
        assert params == {"layer": ex.layer, "relu": False, "upsample": "none", "eigen_smooth": False, "aug_smooth": False}
        assert got.model_evaluations == 1 and got.stages == 1  # the prediction reads the layer
        assert rel_err(got.attribution, expected) < 1e-5
        assert got.attribution.mean() + bias[target] == pytest.approx(logits[target], rel=1e-4, abs=1e-4)
    # Upsampled (the default): bilinear with half-pixel centres to the input's size; relu on request.
    full, _ = xp.explain(Cam(), {"relu": True}, ex.in_process, x, 0)
    small = np.maximum(np.tensordot(weight[0], activation, axes=1), 0)
    up = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=x.shape[1:], mode="bilinear",
                                         align_corners=False)[0, 0].numpy()
    assert full.attribution.shape == x.shape[1:]
    assert rel_err(full.attribution, up) < 1e-5


def test_cam_refuses_a_model_without_a_pooling_and_linear_head(exported):
    ex = exported("vgg")
    _, view = ex.in_process
    reason = Cam().unavailable(view)
    assert "global average pooling" in reason and "Gemm" in reason, reason
    with pytest.raises(FailedPrecondition, match="global average pooling"):
        Cam().parameters({}, view, Settings(), "logit")


def test_cam_layer_must_be_the_pooled_activation(exported):
    ex = exported("resnet")
    _, view = ex.in_process
    other = next(layer for layer in view.white_box.layers if layer != ex.layer)
    with pytest.raises(InvalidArgument) as err:
        Cam().parameters({"layer": other}, view, Settings(), "logit")
    assert err.value.field == "cam.layer" and ex.layer in err.value.message and other in err.value.message
    with pytest.raises(InvalidArgument, match="cam.layer"):
        Cam().parameters({"layer": "nope"}, view, Settings(), "logit")
    assert Cam().parameters({"layer": ex.layer}, view, Settings(), "logit")["layer"] == ex.layer
