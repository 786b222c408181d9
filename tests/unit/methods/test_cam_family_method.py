"""The CAM family (xgrad_cam, layer_cam, hires_cam, grad_cam_element_wise, eigen_cam, eigen_grad_cam,
ablation_cam, smooth_grad_cam_plus_plus), its eigen_smooth and aug_smooth options, and feature_maps,
through the real engine on tiny graphs with hand-computed answers.

The model: input [3, 6, 5] -> 1x1 Conv (4 channels, no bias) "pre" -> Relu "act" -> GlobalAveragePool
-> Flatten -> MatMul. At "act" the gradient of logit c is head[k, c] / (H W) everywhere, whatever the
input (the head is linear), so every CAM has a closed form in the activation; and the model is
equivariant to horizontal flips and positively homogeneous, so each of aug_smooth's six maps is the
input's own map, scaled.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.engine.engine import ServedModel
from explaind.errors import InvalidArgument
from explaind.methods.ablation_cam import AblationCam
from explaind.methods.base import ModelView
from explaind.methods.cam import Cam
from explaind.methods.cam_base import min_max
from explaind.methods.eigen_cam import EigenCam
from explaind.methods.eigen_grad_cam import EigenGradCam
from explaind.methods.feature_maps import FeatureMaps, gate_tensors
from explaind.methods.grad_cam import GradCam
from explaind.methods.grad_cam_element_wise import GradCamElementWise
from explaind.methods.hires_cam import HiResCam
from explaind.methods.layer_cam import LayerCam
from explaind.methods.smooth_grad_cam_plus_plus import SmoothGradCamPlusPlus
from explaind.methods.xgrad_cam import XGradCam
from explaind.models.white_box import WhiteBox, four_d_activations
from explaind.onnxgraph.resample import upsample
from explaind.onnxgraph.signature import ModelSignature

from _linear import settings
from inprocess import explain

SHAPE = (3, 6, 5)
K, CLASSES, TARGET = 4, 3, 2
X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
RNG = np.random.default_rng(5)
CONV = RNG.normal(size=(K, SHAPE[0], 1, 1)).astype(np.float32)
HEAD = RNG.normal(size=(K, CLASSES)).astype(np.float32)


def model(gated: bool = False) -> onnx.ModelProto:
    """input -> Conv "pre" -> Relu "act" [-> * Sigmoid(GAP(act)) "gated"] -> GlobalAveragePool -> Flatten -> MatMul."""
    nodes = [helper.make_node("Conv", ["input", "cw"], ["pre"]), helper.make_node("Relu", ["pre"], ["act"])]
    pooled = "act"
    if gated:
        nodes += [helper.make_node("GlobalAveragePool", ["act"], ["squeeze"]),
                  helper.make_node("Sigmoid", ["squeeze"], ["gate"]),
                  helper.make_node("Mul", ["act", "gate"], ["gated"])]
        pooled = "gated"
    nodes += [helper.make_node("GlobalAveragePool", [pooled], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    graph = helper.make_graph(nodes, "cams", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                              [numpy_helper.from_array(CONV, "cw"), numpy_helper.from_array(HEAD, "head")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def served(gated: bool = False) -> tuple[ServedModel, WhiteBox]:
    m = model(gated)
    layers = tuple(four_d_activations(m))
    return (ServedModel("cams", m, ModelSignature("input", "logits", SHAPE, "NCHW", "logits"), 16, 1.0),
            WhiteBox(True, "", layers, "act"))


def run(method, given, x=X, gated=False, seed=1):
    s, white_box = served(gated)
    return explain(method, {"upsample": "none", **given}, s, x, TARGET, "logit", seed=seed, white_box=white_box)


def activation(x=X) -> tuple[np.ndarray, np.ndarray]:
    pre = np.einsum("kc,chw->khw", CONV[:, :, 0, 0].astype(np.float64), x.astype(np.float64))
    return pre, np.maximum(pre, 0)


PRE, ACT = activation()
GRAD = np.broadcast_to(HEAD[:, TARGET][:, None, None].astype(np.float64) / (SHAPE[1] * SHAPE[2]), ACT.shape)


def first_component(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(len(maps), -1).T
    flat = flat - flat.mean(axis=0)
    return (flat @ np.linalg.svd(flat)[2][0]).reshape(maps.shape[1:])


def test_gradient_cams_in_closed_form():
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    expected = {
        XGradCam: relu(np.tensordot((GRAD * ACT).sum(axis=(1, 2)) / (ACT.sum(axis=(1, 2)) + 1e-7), ACT, axes=1)),
        LayerCam: relu((relu(GRAD) * ACT).sum(axis=0)),
        HiResCam: relu((GRAD * ACT).sum(axis=0)),
        GradCamElementWise: relu(relu(GRAD * ACT).sum(axis=0)),
        EigenGradCam: relu(first_component(GRAD * ACT)),
    }
    for cls, cam in expected.items():
        got, params = run(cls(), {})
        assert params["layer"] == "act" and params["relu"] is True, cls.name
        assert np.abs(cam).max() > 0, cls.name
        np.testing.assert_allclose(got.attribution, cam, rtol=1e-4, atol=1e-6 * np.abs(cam).max(), err_msg=cls.name)
        assert got.model_evaluations == got.planned_evaluations == 2, cls.name  # prediction + one gradient row
    # relu false keeps the negative evidence of HiResCAM (the head has negative weights)
    got, _ = run(HiResCam(), {"relu": False})
    np.testing.assert_allclose(got.attribution, (GRAD * ACT).sum(axis=0), rtol=1e-4, atol=1e-7)


def test_eigen_cam_is_the_first_principal_component_of_the_activation_read_by_the_prediction():
    got, params = run(EigenCam(), {})
    assert "eigen_smooth" not in params
    cam = np.maximum(first_component(ACT), 0)
    np.testing.assert_allclose(got.attribution, cam, rtol=1e-4, atol=1e-5 * np.abs(cam).max())
    assert got.model_evaluations == 1 and got.stages == 1  # forward only: the prediction's pass


def test_eigen_smooth_projects_the_weighted_activations():
    got, _ = run(GradCam(), {"eigen_smooth": True, "relu": False})
    weighted = GRAD.mean(axis=(1, 2))[:, None, None] * ACT
    np.testing.assert_allclose(got.attribution, first_component(weighted), rtol=1e-4,
                               atol=1e-5 * np.abs(weighted).max())


def test_aug_smooth_averages_six_scaled_maps():
    # Flip-equivariant and positively homogeneous: each augmented map is the input's, flipped back and scaled.
    got, params = run(LayerCam(), {"aug_smooth": True, "upsample": "bilinear"})
    assert got.model_evaluations == got.planned_evaluations == 1 + 6
    cam = np.maximum((np.maximum(GRAD, 0) * ACT).sum(axis=0), 0)
    expected = min_max(upsample(min_max(cam), SHAPE[1:], "bilinear"))
    assert expected.max() == pytest.approx(1.0, abs=1e-6) and got.attribution.shape == SHAPE[1:]
    np.testing.assert_allclose(got.attribution, expected, atol=1e-5)
    # Score-CAM-like forward CAMs read each augmented input's layer with a prediction row of their own
    got, _ = run(EigenCam(), {"aug_smooth": True})
    assert got.model_evaluations == 1 + 5
    np.testing.assert_allclose(got.attribution, min_max(min_max(np.maximum(first_component(ACT), 0))), atol=1e-5)
    # CAM (relu false: its map keeps its sign until the scaling)
    got, params = run(Cam(), {"aug_smooth": True})
    assert params["relu"] is False and got.model_evaluations == 1 + 5
    np.testing.assert_allclose(got.attribution, min_max(min_max(np.tensordot(HEAD[:, TARGET], ACT, axes=1))), atol=1e-5)


def test_ablation_cam_on_a_relu_layer_ablates_with_zero():
    assert ACT.min() == 0  # the ReLU zeroes some positions: ablation value 0
    got, params = run(AblationCam(), {})
    y = float(HEAD[:, TARGET] @ ACT.mean(axis=(1, 2)))
    y_k = y - HEAD[:, TARGET] * ACT.mean(axis=(1, 2))                    # channel k at 0
    weights = (y - y_k) / y
    np.testing.assert_allclose(got.arrays["channel_weights"], weights, rtol=1e-4)
    np.testing.assert_allclose(got.attribution, np.maximum(np.tensordot(weights, ACT, axes=1), 0), rtol=1e-4,
                               atol=1e-6)
    assert got.model_evaluations == got.planned_evaluations == 1 + K + 1  # prediction, K, unablated


def test_ablation_cam_below_a_layer_with_negative_values_ablates_with_min_minus_1e7():
    assert PRE.min() < 0
    got, _ = run(AblationCam(), {"layer": "pre", "relu": False})
    # the model's tail after "pre" is ReLU -> mean -> head: a channel at min - 1e7 contributes nothing
    y = float(HEAD[:, TARGET] @ ACT.mean(axis=(1, 2)))
    y_k = y - HEAD[:, TARGET] * ACT.mean(axis=(1, 2))
    weights = (y - y_k) / y
    np.testing.assert_allclose(got.arrays["channel_weights"], weights, rtol=1e-4)
    np.testing.assert_allclose(got.attribution, np.tensordot(weights, PRE, axes=1), rtol=1e-4, atol=1e-6)


def test_smooth_grad_cam_plus_plus_averages_the_gradient_powers_with_the_clean_activation():
    # The layer gradient is the same for every noisy copy, so the answer is Grad-CAM++ on the clean
    # input's activation, whatever the noise (a noisy copy's activation would differ).
    got, params = run(SmoothGradCamPlusPlus(), {"num_samples": 5, "stdev": 2.0})
    assert params["num_samples"] == 5 and "noise_level" not in params
    g2, g3 = GRAD ** 2, GRAD ** 3
    alpha = g2 / (2 * g2 + ACT.sum(axis=(1, 2))[:, None, None] * g3 + 1e-6)
    weights = (alpha * np.maximum(GRAD, 0)).sum(axis=(1, 2))
    np.testing.assert_allclose(got.attribution, np.maximum(np.tensordot(weights, ACT, axes=1), 0), rtol=1e-4,
                               atol=1e-7)
    assert got.model_evaluations == 1 + 5
    _, params = run(SmoothGradCamPlusPlus(), {})
    assert params["num_samples"] == 25 and params["noise_level"] == 0.15


def test_feature_maps_rank_channels_and_read_the_gates():
    s, white_box = served(gated=True)
    assert gate_tensors(s.model) == ("gate",)
    got, params = explain(FeatureMaps(), {"top_k": 3}, s, X, TARGET, "logit", white_box=white_box)
    means = ACT.mean(axis=(1, 2))
    chosen = np.argsort(-means, kind="stable")[:3]
    np.testing.assert_array_equal(got.arrays["channels"], chosen)
    np.testing.assert_allclose(got.arrays["channel_scores"], means[chosen], rtol=1e-5)
    np.testing.assert_allclose(got.arrays["feature_maps"], ACT[chosen], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.arrays["gate:gate"], 1 / (1 + np.exp(-means)), rtol=1e-5)
    np.testing.assert_allclose(got.attribution, upsample(ACT[chosen].mean(axis=0), SHAPE[1:], "bilinear"),
                               rtol=1e-5, atol=1e-6)
    assert got.model_evaluations == 1 + 1  # the prediction (the layer) and one row for the gate
    # by Grad-CAM weight: d logit / d act = head * sigmoid(.) terms; ranked by the gradient's mean
    got, _ = explain(FeatureMaps(), {"top_k": 10, "rank_by": "grad_cam"}, s, X, TARGET, "logit", white_box=white_box)
    assert len(got.arrays["channels"]) == K  # at most the layer's channels
    assert list(np.sort(got.arrays["channel_scores"])[::-1]) == list(got.arrays["channel_scores"])
    s0, w0 = served()
    got, _ = explain(FeatureMaps(), {"rank_by": "grad_cam"}, s0, X, TARGET, "logit", white_box=w0)
    weights = GRAD.mean(axis=(1, 2))
    np.testing.assert_array_equal(got.arrays["channels"], np.argsort(-weights, kind="stable"))
    np.testing.assert_allclose(got.arrays["channel_scores"], np.sort(weights)[::-1], rtol=1e-5)
    assert not [k for k in got.arrays if k.startswith("gate:")]


@pytest.mark.parametrize("method, given, field", [
    (AblationCam(), {"layer": "nope"}, "ablation_cam.layer"),
    (SmoothGradCamPlusPlus(), {"num_samples": 0}, "smooth_grad_cam_plus_plus.num_samples"),
    (SmoothGradCamPlusPlus(), {"stdev": 0.5, "noise_level": 0.1}, "smooth_grad_cam_plus_plus.stdev"),
    (FeatureMaps(), {"top_k": 0}, "feature_maps.top_k"),
    (FeatureMaps(), {"rank_by": "loudest"}, "feature_maps.rank_by"),
    (EigenCam(), {"eigen_smooth": True}, "eigen_cam.eigen_smooth"),
])
def test_bad_parameters_name_the_field(method, given, field):
    s, white_box = served()
    with pytest.raises(InvalidArgument, match=field.replace(".", r"\.")):
        method.parameters(given, ModelView("image", s.signature, None, white_box), settings(), "logit")
