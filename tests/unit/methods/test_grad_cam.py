"""Grad-CAM and Grad-CAM++ through the real engine, in closed form on a 1x1 Conv + ReLU + global
average pooling model (the gradient at the layer is the head's column over H * W).

Grad-CAM++ has no file of its own: its closed form is checked in the same test as Grad-CAM's, on the
same activations and gradients (splitting it would add a test)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.engine.engine import ServedModel
from explaind.errors import InvalidArgument
from explaind.methods.base import ModelView
from explaind.methods.grad_cam import GradCam
from explaind.methods.grad_cam_plus_plus import GradCamPlusPlus
from explaind.models.white_box import WhiteBox
from explaind.onnxgraph.signature import ModelSignature

from _linear import settings
from inprocess import explain

SHAPE = (3, 6, 5)
X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def cam_model(k: int = 4, classes: int = 3) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """input -> 1x1 Conv (k channels) -> Relu ("act") -> GlobalAveragePool -> Flatten -> MatMul."""
    rng = np.random.default_rng(5)
    conv = rng.normal(size=(k, SHAPE[0], 1, 1)).astype(np.float32)
    head = rng.normal(size=(k, classes)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "cw"], ["pre"]), helper.make_node("Relu", ["pre"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    graph = helper.make_graph(nodes, "cam", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(conv, "cw"), numpy_helper.from_array(head, "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, conv, head


def test_grad_cam_and_grad_cam_plus_plus_in_closed_form():
    from explaind.models.white_box import four_d_activations, last_pooled_activation

    model, conv, head = cam_model()
    layers = four_d_activations(model)
    assert layers == ["pre", "act"] and last_pooled_activation(model, set(layers)) == "act"
    served = ServedModel("cam", model, ModelSignature("input", "logits", SHAPE, "NCHW", "logits"), 16, 1.0)
    white_box = WhiteBox(True, "", tuple(layers), "act")
    act = np.maximum(np.einsum("kc,chw->khw", conv[:, :, 0, 0], X), 0)
    grad = np.broadcast_to(head[:, 2][:, None, None] / (SHAPE[1] * SHAPE[2]), act.shape)
    cam = np.maximum(np.tensordot(grad.mean(axis=(1, 2)), act, axes=1), 0)
    result, params = explain(GradCam(), {"upsample": "none"}, served, X, 2, "logit", white_box=white_box)
    assert params["layer"] == "act"
    np.testing.assert_allclose(result.attribution, cam, rtol=1e-5, atol=1e-7)
    g2, g3 = grad ** 2, grad ** 3
    alpha = np.where(grad != 0, g2 / (2 * g2 + act.sum(axis=(1, 2))[:, None, None] * g3 + 1e-6), 0)
    weights = (alpha * np.maximum(grad, 0)).sum(axis=(1, 2))
    plus, _ = explain(GradCamPlusPlus(), {"upsample": "none"}, served, X, 2, "logit", white_box=white_box)
    np.testing.assert_allclose(plus.attribution, np.maximum(np.tensordot(weights, act, axes=1), 0), rtol=1e-4, atol=1e-7)
    with pytest.raises(InvalidArgument, match="grad_cam.layer.*act"):
        GradCam().parameters({"layer": "nope"}, ModelView("image", served.signature, None, white_box), settings(), "logit")
