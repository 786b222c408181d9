"""DeepLIFT, DeepLIFT SHAP, RectGrad and excitation backprop through the real engine, on models whose
answers are known in closed form.

- A linear model: DeepLIFT = (x - x0) * w_c (every multiplier is a weight), the convergence delta 0;
  DeepLIFT SHAP over a background = (x - mean(background)) * w_c, one row per background row.
- A two-layer ReLU model: DeepLIFT sums to f(x) - f(x0) and differs from gradient x (x - x0).
- RectGrad with q = 0 on a model whose every ReLU unit has a * g > min(a * g): the gradient except the
  unit of smallest importance; excitation backprop on a positive linear model: x w / (x . w).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.engine.engine import ServedModel
from explaind.methods.deep_lift import DeepLift
from explaind.methods.deep_lift_shap import DeepLiftShap
from explaind.methods.excitation_backprop import ExcitationBackprop
from explaind.methods.rect_grad import RectGrad
from explaind.models.white_box import WhiteBox
from explaind.onnxgraph.signature import ModelSignature

from _linear import served_linear
from inprocess import explain

SHAPE = (2, 3, 4)
X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
WB = WhiteBox(True)


def test_deep_lift_of_a_linear_model_is_the_difference_times_the_weights():
    served, weights = served_linear("lin", SHAPE, 3)
    result, params = explain(DeepLift(), {"baseline": 0.5}, served, X, 1, "logit", white_box=WB)
    assert params == {"baseline": 0.5, "channel_reduction": "none"}
    expected = (X.astype(np.float64) - 0.5) * weights[:, 1].reshape(SHAPE)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-5, atol=1e-6)
    f = lambda v: float(v.reshape(-1).astype(np.float64) @ weights[:, 1])  # noqa: E731
    assert result.figures["f_input"] == pytest.approx(f(X), rel=1e-5)
    assert result.figures["f_baseline"] == pytest.approx(f(np.full(SHAPE, 0.5)), rel=1e-5)
    assert abs(result.figures["convergence_delta"]) < 1e-4
    assert result.model_evaluations == 1 + 1
    summed, _ = explain(DeepLift(), {"channel_reduction": "sum"}, served, X, 1, "logit", white_box=WB)
    np.testing.assert_allclose(summed.attribution, (X * weights[:, 1].reshape(SHAPE)).sum(axis=0), rtol=1e-5, atol=1e-6)


def test_deep_lift_shap_averages_over_the_background():
    served, weights = served_linear("lin", (5,), 3, layout="tabular")
    x = np.random.default_rng(1).normal(size=5).astype(np.float32)
    background = np.random.default_rng(2).normal(size=(7, 5)).astype(np.float32)
    result, _ = explain(DeepLiftShap(), {}, served, x, 2, "logit", kind="tabular", background=background, white_box=WB)
    expected = (x.astype(np.float64) - background.astype(np.float64).mean(axis=0)) * weights[:, 2]
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-5, atol=1e-6)
    assert result.model_evaluations == 1 + 7
    assert abs(result.figures["convergence_delta"]) < 1e-4


def relu_mlp(w1: np.ndarray, w2: np.ndarray) -> ServedModel:
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["logits"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", w1.shape[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", w2.shape[1]])],
                              [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ServedModel("mlp", model, ModelSignature("input", "logits", (w1.shape[0],), "tabular", "logits"), 16, 1.0)


def test_deep_lift_of_a_relu_network_sums_to_the_difference_of_scores():
    rng = np.random.default_rng(3)
    w1, w2 = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    served = relu_mlp(w1, w2)
    x = rng.normal(size=4).astype(np.float32)
    result, _ = explain(DeepLift(), {"baseline": -0.3}, served, x, 0, "logit", kind="tabular", white_box=WB)
    f = lambda v: float(np.maximum(v.astype(np.float64) @ w1, 0) @ w2[:, 0])  # noqa: E731
    x0 = np.full(4, -0.3)
    assert result.attribution.sum() == pytest.approx(f(x) - f(x0), rel=1e-5)
    h, h0 = x @ w1, x0 @ w1
    m = (np.maximum(h, 0) - np.maximum(h0, 0)) / (h - h0)
    np.testing.assert_allclose(result.attribution, (x - x0) * (w1 @ (m * w2[:, 0])), rtol=1e-4, atol=1e-6)


def test_rect_grad_drops_the_least_important_unit_at_q_zero_and_everything_at_q_100():
    w1 = np.eye(3, dtype=np.float32)
    w2 = np.array([[1.0], [2.0], [3.0]], np.float32)
    served = relu_mlp(w1, w2)
    x = np.array([1.0, 1.0, 1.0], np.float32)           # a * g = [1, 2, 3]
    low, params = explain(RectGrad(), {"q": 0}, served, x, 0, "logit", kind="tabular", white_box=WB)
    assert params == {"q": 0.0}
    np.testing.assert_allclose(low.attribution, [0.0, 2.0, 3.0])
    high, _ = explain(RectGrad(), {"q": 100}, served, x, 0, "logit", kind="tabular", white_box=WB)
    np.testing.assert_allclose(high.attribution, [0.0, 0.0, 0.0])
    default, params = explain(RectGrad(), {}, served, x, 0, "logit", kind="tabular", white_box=WB)
    assert params["q"] == 98.0                           # tau = 2 + 0.96 * (3 - 2): only unit 2 passes
    np.testing.assert_allclose(default.attribution, [0.0, 0.0, 3.0])


def test_excitation_backprop_of_a_positive_linear_model_is_the_normalised_contribution():
    weights = np.abs(np.random.default_rng(4).normal(size=(5, 2))).astype(np.float32)
    weights[0, 1] = -1.0                                 # a negative weight passes nothing
    served = relu_mlp(weights, np.eye(2, dtype=np.float32))
    x = np.array([0.5, 1.0, 2.0, 0.1, 0.3], np.float32)
    result, params = explain(ExcitationBackprop(), {}, served, x, 1, "logit", kind="tabular", white_box=WB)
    assert params["layer"] == "" and params["contrastive"] is False
    w_plus = np.maximum(weights[:, 1], 0)
    np.testing.assert_allclose(result.attribution, x * w_plus / (x @ w_plus), rtol=1e-5)
    assert result.attribution.sum() == pytest.approx(1.0, rel=1e-5)


def test_deep_lift_of_the_probability_takes_the_softmax_rule():
    served, weights = served_linear("lin", SHAPE, 3)
    x0 = np.zeros(SHAPE, np.float32)
    result, _ = explain(DeepLift(), {}, served, X, 1, "probability", white_box=WB)
    z, z0 = X.reshape(-1).astype(np.float64) @ weights, x0.reshape(-1) @ weights
    p, p0 = np.exp(z) / np.exp(z).sum(), np.exp(z0) / np.exp(z0).sum()
    m = np.zeros(3)
    m[1] = (p[1] - p0[1]) / (z[1] - z0[1])
    m -= m.mean()                                        # the rescaled softmax, mean removed per row
    np.testing.assert_allclose(result.attribution, X * (weights @ m).reshape(SHAPE), rtol=1e-4, atol=1e-7)
    assert result.figures["f_input"] == pytest.approx(p[1], rel=1e-5)


def test_concurrent_rect_grad_requests_with_different_q_get_their_own_answers():
    """q is a per-job input of one graph: two concurrent requests, q 0 and q 100 (the model waits 200 ms
    for company, so their rows are batched together), each get the answer of their own q."""
    import asyncio

    from explaind.config import Settings
    from explaind.engine.engine import Engine
    from inprocess import run_method, view_of

    served = relu_mlp(np.eye(3, dtype=np.float32), np.array([[1.0], [2.0], [3.0]], np.float32))
    served = ServedModel(served.name, served.model, served.signature, 16, 200.0)  # wait 200 ms for company
    view = view_of(served, kind="tabular", white_box=WB)
    x = np.ones(3, np.float32)

    async def main():
        engine = Engine(Settings(intra_op_threads=1))
        try:
            return await asyncio.gather(*[run_method(engine, served, RectGrad(), {"q": q}, x, 0, "logit", view=view)
                                          for q in (0.0, 100.0)])
        finally:
            await engine.close()

    (low, _), (high, _) = asyncio.run(main())
    np.testing.assert_allclose(low.attribution, [0.0, 2.0, 3.0])
    np.testing.assert_allclose(high.attribution, [0.0, 0.0, 0.0])
