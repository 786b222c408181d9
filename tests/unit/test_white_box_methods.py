"""White-box methods through the real engine, on models whose gradients are known in closed form."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.engine.engine import Engine, ServedModel
from explaind.errors import InvalidArgument
from explaind.methods.base import ModelView
from explaind.methods.grad_cam import GradCam
from explaind.methods.grad_cam_plus_plus import GradCamPlusPlus
from explaind.models.white_box import WhiteBox
from explaind.methods.input_x_gradient import InputXGradient
from explaind.methods.integrated_gradients import IntegratedGradients, quadrature
from explaind.methods.saliency import Saliency
from explaind.methods.smooth_grad import SmoothGrad
from explaind.onnxgraph.signature import ModelSignature

from _linear import linear_model, run, settings, softmax
from inprocess import run_method

SHAPE = (3, 6, 5)


def linear_served() -> tuple[ServedModel, np.ndarray]:
    model, weights = linear_model(SHAPE, 4)
    return ServedModel("lin", model, ModelSignature("input", "logits", SHAPE, "NCHW", "logits"), 16, 1.0), weights


def explain(method, given, x, target=1, score="logit", served=None, white_box=WhiteBox(True), seed=3):
    async def main():
        engine = Engine(settings())
        s = served or linear_served()[0]
        outcome = await run_method(engine, s, method, given, x, target, score, seed, white_box=white_box)
        await engine.close()
        return outcome

    return run(main())


X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def test_saliency_of_a_linear_model_is_its_weight_column():
    served, weights = linear_served()
    gradient = weights[:, 1].reshape(SHAPE)
    result, params = explain(Saliency(), {}, X, served=served)
    assert params == {"postprocess": "absolute", "channel_reduction": "max"}
    np.testing.assert_allclose(result.attribution, np.abs(gradient).max(axis=0), rtol=1e-6)
    raw, _ = explain(Saliency(), {"postprocess": "raw", "channel_reduction": "none"}, X, served=served)
    np.testing.assert_allclose(raw.attribution, gradient, rtol=1e-6)
    assert raw.model_evaluations == 1 + 1  # the prediction and the gradient


def test_probability_score_differentiates_the_softmax():
    served, weights = linear_served()
    p = softmax(X.reshape(-1).astype(np.float64) @ weights)
    # d p_1 / d x = p_1 * (W[:, 1] - sum_k p_k W[:, k])
    expected = (p[1] * (weights[:, 1] - weights @ p)).reshape(SHAPE)
    result, _ = explain(Saliency(), {"postprocess": "raw", "channel_reduction": "none"}, X, score="probability",
                        served=served)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-7)


def test_input_x_gradient():
    served, weights = linear_served()
    result, _ = explain(InputXGradient(), {"channel_reduction": "sum"}, X, target=2, served=served)
    np.testing.assert_allclose(result.attribution, (X * weights[:, 2].reshape(SHAPE)).sum(axis=0), rtol=1e-5)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid"])
def test_integrated_gradients_of_a_linear_model_is_exact_and_complete(method):
    served, weights = linear_served()
    result, params = explain(IntegratedGradients(), {"n_steps": 7, "method": method, "baseline": 0.5}, X,
                             served=served)
    total_weight = quadrature(method, 7)[1].sum()  # 1, but 6/7 for Captum's trapezoid
    exact = (X - 0.5) * weights[:, 1].reshape(SHAPE)
    np.testing.assert_allclose(result.attribution, total_weight * exact, rtol=1e-4, atol=1e-6)
    expected_gap = (total_weight - 1) * exact.sum()
    assert result.figures["completeness_gap"] == pytest.approx(expected_gap, abs=1e-4)
    f = lambda z: float(z.reshape(-1).astype(np.float64) @ weights[:, 1])  # noqa: E731
    assert result.figures["f_input"] == pytest.approx(f(X), rel=1e-5)
    assert result.figures["f_baseline"] == pytest.approx(f(np.full(SHAPE, 0.5)), rel=1e-5, abs=1e-6)
    assert result.model_evaluations == 1 + 7 + 2  # the prediction, the nodes, f(input) and f(baseline)


def test_quadratures_follow_captum():
    alphas, steps = quadrature("gausslegendre", 3)
    np.testing.assert_allclose(alphas, [0.5 - 0.5 * np.sqrt(0.6), 0.5, 0.5 + 0.5 * np.sqrt(0.6)])
    np.testing.assert_allclose(steps, [5 / 18, 8 / 18, 5 / 18])
    alphas, steps = quadrature("riemann_trapezoid", 5)
    np.testing.assert_allclose(alphas, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(steps, [0.1, 0.2, 0.2, 0.2, 0.1])  # Captum's: 1/n, ends halved
    np.testing.assert_allclose(quadrature("riemann_middle", 4)[0], [0.125, 0.375, 0.625, 0.875])


def quadratic_model() -> onnx.ModelProto:
    """logits = [sum(x^2), sum(x)]: the gradient of logit 0 is 2x, so SmoothGrad's mean is 2 * mean(noisy x)."""
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Mul", ["flat", "flat"], ["sq"]),
             helper.make_node("MatMul", ["sq", "ones"], ["a"]), helper.make_node("MatMul", ["flat", "ones"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["logits"], axis=1)]
    size = int(np.prod(SHAPE))
    graph = helper.make_graph(nodes, "quadratic", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(np.ones((size, 1), np.float32), "ones")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_smooth_grad_averages_gradients_at_noisy_copies_made_in_the_graph():
    from explaind.onnxgraph.noise import gaussian_noise_reference

    served = ServedModel("quad", quadratic_model(), ModelSignature("input", "logits", SHAPE, "NCHW", "logits"), 16, 1.0)
    result, params = explain(SmoothGrad(), {"num_samples": 20, "noise_level": 0.2}, X, target=0, served=served, seed=9)
    sigma = 0.2 * float(X.max() - X.min())
    seeds = np.random.default_rng(9).integers(0, 2**31 - 1, size=20, dtype=np.int64)
    noise = gaussian_noise_reference(seeds, X.size).reshape(20, *SHAPE)
    expected = (2 * (X[None] + np.float32(sigma) * noise)).mean(axis=0)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(result.attribution, 2 * X, atol=1e-3)  # the noise was really there
    assert result.model_evaluations == 1 + 20


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
    result, params = explain(GradCam(), {"upsample": "none"}, X, target=2, served=served, white_box=white_box)
    assert params["layer"] == "act"
    np.testing.assert_allclose(result.attribution, cam, rtol=1e-5, atol=1e-7)
    g2, g3 = grad ** 2, grad ** 3
    alpha = np.where(grad != 0, g2 / (2 * g2 + act.sum(axis=(1, 2))[:, None, None] * g3 + 1e-6), 0)
    weights = (alpha * np.maximum(grad, 0)).sum(axis=(1, 2))
    plus, _ = explain(GradCamPlusPlus(), {"upsample": "none"}, X, target=2, served=served, white_box=white_box)
    np.testing.assert_allclose(plus.attribution, np.maximum(np.tensordot(weights, act, axes=1), 0), rtol=1e-4, atol=1e-7)
    with pytest.raises(InvalidArgument, match="grad_cam.layer.*act"):
        GradCam().parameters({"layer": "nope"}, ModelView("image", served.signature, None, white_box), settings(), "logit")


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
    result, _ = explain(Saliency(), {"postprocess": "raw", "channel_reduction": "none"}, X, target=3, score=score,
                        served=served, white_box=white_box)
    if score == "logit":
        expected = weights[:, 3].reshape(SHAPE)
    else:
        p = softmax(X.reshape(-1).astype(np.float64) @ weights)
        expected = (p[3] * (weights[:, 3] - weights @ p)).reshape(SHAPE)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-7)


def test_gradient_rows_of_concurrent_requests_share_batches_and_keep_their_answers():
    import asyncio

    from explaind.methods.base import MethodContext
    from explaind.metrics import Metrics

    served, weights = linear_served()
    view = ModelView("image", served.signature, None, WhiteBox(True))
    xs = [X, -X, 2 * X]

    async def main():
        metrics = Metrics()
        engine = Engine(settings(), metrics)
        method = IntegratedGradients()
        params = method.parameters({"n_steps": 20}, view, engine.settings, "logit")

        def ctx(x, target):
            return MethodContext(engine=engine, served=served, model=view, x=x, score="logit",
                                 rng=np.random.default_rng(0), settings=engine.settings,
                                 choose_target=lambda prediction: target)

        runs = await asyncio.gather(*(method.explain(params, ctx(x, t)) for t, x in enumerate(xs)))
        results = [r.result for r in runs]
        await engine.close()
        return results, metrics

    results, metrics = run(main())
    for target, (x, result) in enumerate(zip(xs, results)):
        np.testing.assert_allclose(result.attribution, x * weights[:, target].reshape(SHAPE), rtol=1e-4, atol=1e-6)
    labels = {"model": "lin", "variant": "gradient"}
    batches = metrics.registry.get_sample_value("explaind_batch_rows_count", labels)
    assert metrics.registry.get_sample_value("explaind_rows_total", labels) == 3 * 22
    assert metrics.registry.get_sample_value("explaind_batch_jobs_sum", labels) > batches  # shared batches
