"""Saliency through the real engine, on models whose gradients are known in closed form: a linear
model (logit and probability score), and one exporting its own gradient (explaind uses it as it is)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.engine.engine import ServedModel
from explaind.methods.grad_cam import GradCam
from explaind.methods.saliency import Saliency
from explaind.models.white_box import WhiteBox
from explaind.onnxgraph.signature import ModelSignature

from _linear import linear_model, served_linear, softmax
from inprocess import explain

SHAPE = (3, 6, 5)
X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def test_saliency_of_a_linear_model_is_its_weight_column():
    served, weights = served_linear("lin", SHAPE, 4)
    gradient = weights[:, 1].reshape(SHAPE)
    result, params = explain(Saliency(), {}, served, X, 1, "logit", white_box=WhiteBox(True))
    assert params == {"postprocess": "absolute", "channel_reduction": "max"}
    np.testing.assert_allclose(result.attribution, np.abs(gradient).max(axis=0), rtol=1e-6)
    raw, _ = explain(Saliency(), {"postprocess": "raw", "channel_reduction": "none"}, served, X, 1, "logit",
                     white_box=WhiteBox(True))
    np.testing.assert_allclose(raw.attribution, gradient, rtol=1e-6)
    assert raw.model_evaluations == 1 + 1  # the prediction and the gradient


def test_probability_score_differentiates_the_softmax():
    served, weights = served_linear("lin", SHAPE, 4)
    p = softmax(X.reshape(-1).astype(np.float64) @ weights)
    # d p_1 / d x = p_1 * (W[:, 1] - sum_k p_k W[:, k])
    expected = (p[1] * (weights[:, 1] - weights @ p)).reshape(SHAPE)
    result, _ = explain(Saliency(), {"postprocess": "raw", "channel_reduction": "none"}, served, X, 1, "probability",
                        white_box=WhiteBox(True))
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-7)


def exported_gradient_model(weights: np.ndarray) -> onnx.ModelProto:
    """A linear model that outputs its own gradient: grad = reshape(seed @ W^T), as an exporter would."""
    size = int(np.prod(SHAPE))
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["logits"]),
             helper.make_node("Transpose", ["W"], ["Wt"]), helper.make_node("MatMul", ["seed", "Wt"], ["g_flat"]),
             helper.make_node("Reshape", ["g_flat", "shape"], ["grad"])]
    graph = helper.make_graph(
        nodes, "exported",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE]),
         helper.make_tensor_value_info("seed", TensorProto.FLOAT, ["N", weights.shape[1]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", weights.shape[1]]),
         helper.make_tensor_value_info("grad", TensorProto.FLOAT, ["N", *SHAPE])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.array([-1, *SHAPE], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert size == weights.shape[0]
    return model


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_a_model_exporting_its_gradients_is_used_as_it_is(tmp_path, score):
    import yaml

    from explaind.models.repository import ModelRepository
    from explaind.models.white_box import inspect_white_box

    _, weights = linear_model(SHAPE, 4)
    folder = tmp_path / "exported"
    folder.mkdir()
    onnx.save_model(exported_gradient_model(weights), str(folder / "model.onnx"))
    (folder / "model.yaml").write_text(yaml.safe_dump({
        "kind": "image", "input": {"name": "input"}, "output": {"name": "logits"},
        "gradients": "exported", "exported_gradients": {"seed": "seed", "input_gradient": "grad"},
        "preprocess": {"size": [6, 5]}}))
    repo = ModelRepository(tmp_path)
    repo.scan()
    entry = repo.get("exported")
    assert entry.ready, entry.reason
    white_box = inspect_white_box(entry)
    assert white_box.available and white_box.exported == ("seed", "grad") and white_box.rules == ("plain",)
    assert not white_box.offers(GradCam.needs, GradCam.rules_needed)
    served = ServedModel("exported", entry.model, ModelSignature("input", "logits", SHAPE, "NCHW", "logits"), 16, 1.0)
    result, _ = explain(Saliency(), {"postprocess": "raw", "channel_reduction": "none"}, served, X, 3, score,
                        white_box=white_box)
    if score == "logit":
        expected = weights[:, 3].reshape(SHAPE)
    else:
        p = softmax(X.reshape(-1).astype(np.float64) @ weights)
        expected = (p[3] * (weights[:, 3] - weights @ p)).reshape(SHAPE)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-7)
