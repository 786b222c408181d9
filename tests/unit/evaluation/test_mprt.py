"""MPRT through the real engine on a two-layer ONNX MLP, against the randomised maps computed by
hand in numpy; the layers found in graphs, the two orders, seeding, and the randomised copies'
sessions released."""

from __future__ import annotations

import asyncio

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy import stats

from explaind.engine.engine import Engine, ServedModel
from explaind.errors import InvalidArgument
from explaind.evaluation.mprt import MPRT, prepared
from explaind.evaluation.run import metric_rng
from explaind.methods.saliency import Saliency
from explaind.models.white_box import WhiteBox
from explaind.onnxgraph.randomise import parametrised_layers, randomisation_steps, redraw, with_parameters
from explaind.onnxgraph.signature import ModelSignature

from _linear import settings
from inprocess import evaluate, run_metric, view_of

F, H, K = 6, 5, 3
WHITE = WhiteBox(True, "", (), "")


def mlp(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """input [N, F] -> Gemm(W1 [H, F], b1, transB) -> Relu -> Gemm(W2 [K, H], b2, transB) -> logits."""
    rng = np.random.default_rng(seed)
    w = {"W1": rng.normal(size=(H, F)), "b1": rng.normal(size=H) * 0.1,
         "W2": rng.normal(size=(K, H)), "b2": rng.normal(size=K) * 0.1}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W1", "b1"], ["h"], name="fc1", transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"], name="fc2", transB=1)],
        "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", F])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w


def served_mlp() -> tuple[ServedModel, dict[str, np.ndarray]]:
    model, w = mlp()
    return ServedModel("mlp", model, ModelSignature("input", "logits", (F,), "tabular", "logits"), 16, 1.0), w


def saliency_by_hand(w: dict[str, np.ndarray], x: np.ndarray, target: int) -> np.ndarray:
    """d logit_target / d x of the MLP: W1^T (relu'(W1 x + b1) * W2[target])."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    mask = (w["W1"] @ x + w["b1"]) > 0
    return w["W1"].T @ (mask * w["W2"][target])


def hand_draws(seed: int, layers: list[tuple[str, str, int]]) -> dict[str, np.ndarray]:
    """The metric's weights stream (the first of its generator's two spawned streams): each layer,
    top first, its weight then its bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    weights_rng = metric_rng(seed, 0, "mprt").spawn(2)[0]
    drawn = {}
    for weight, bias, fan_in in layers:
        bound = 1 / np.sqrt(fan_in)
        shape = {"W1": (H, F), "W2": (K, H)}[weight]
        drawn[weight] = weights_rng.uniform(-bound, bound, size=shape).astype(np.float32)
        drawn[bias] = weights_rng.uniform(-bound, bound, size=shape[0]).astype(np.float32)
    return drawn


def run_mprt(given: dict, seed: int = 1, x: np.ndarray | None = None, target: int = 2, attribution=None):
    served, w = served_mlp()
    x = np.random.default_rng(9).normal(size=F).astype(np.float32) if x is None else x
    original = saliency_by_hand(w, x.astype(np.float64), target)
    if attribution is None:
        attribution = np.abs(original)
    outcome, params = evaluate(MPRT(), given, served, x, target, attribution, score="logit", seed=seed,
                               method=Saliency(), method_params={"postprocess": "absolute"}, kind="tabular",
                               white_box=WHITE)
    return outcome, params, w, x, attribution


def test_layers_of_the_mlp_and_of_a_conv_net():
    model, _ = mlp()
    layers = parametrised_layers(model)
    assert [(l.name, l.op, l.parameters, l.fan_in) for l in layers] == [
        ("fc1", "Gemm", (("W1", "weight"), ("b1", "bias")), F), ("fc2", "Gemm", (("W2", "weight"), ("b2", "bias")), H)]
    # MatMul + Add (a bias) is one layer; a BatchNormalization is one; a Conv's fan-in is C/groups x k x k.
    nodes = [helper.make_node("Conv", ["input", "C"], ["c"], group=1), helper.make_node("BatchNormalization",
             ["c", "s", "b", "m", "v"], ["n"]), helper.make_node("Flatten", ["n"], ["f"]),
             helper.make_node("MatMul", ["f", "M"], ["p"]), helper.make_node("Add", ["p", "B"], ["logits"])]
    inits = {"C": np.ones((4, 2, 3, 3)), "s": np.ones(4), "b": np.zeros(4), "m": np.zeros(4), "v": np.ones(4),
             "M": np.ones((4 * 36, 3)), "B": np.zeros(3)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    layers = parametrised_layers(helper.make_model(graph))
    assert [(l.op, [n for n, _ in l.parameters], l.fan_in) for l in layers] == [
        ("Conv", ["C"], 18), ("BatchNormalization", ["s", "b", "m", "v"], 1), ("MatMul", ["M", "B"], 144)]
    # Uniform re-draw resets a normalisation; normal draws keep the tensor's scale, variances positive.
    reset = redraw(helper.make_model(graph), layers[1], "uniform", np.random.default_rng(0))
    assert [float(reset[k][0]) for k in "sbmv"] == [1.0, 0.0, 0.0, 1.0]
    assert randomisation_steps(layers, 2, "cascading") == [[2], [2, 1]]
    assert randomisation_steps(layers, 3, "independent") == [[2], [1], [0]]


@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_top_layer_randomised_changes_the_map_as_computed_by_hand(order):
    outcome, params, w, x, attribution = run_mprt({"layers": 1, "order": order})
    assert params == {"order": order, "layers": 1, "init": "uniform", "abs": True}
    drawn = hand_draws(1, [("W2", "b2", H)])
    randomised = np.abs(saliency_by_hand({**w, **drawn}, x.astype(np.float64), 2))
    expected = stats.spearmanr(prepared(attribution, True), prepared(randomised, True))[0]
    assert outcome.value.value == pytest.approx(expected, abs=1e-9)
    np.testing.assert_allclose(outcome.value.curves["spearman"], [expected], atol=1e-9)
    np.testing.assert_array_equal(outcome.value.curves["node"], [2])
    assert set(outcome.value.curves) == {"spearman", "constant", "node"}  # tabular: no SSIM or HOG
    assert outcome.stats.model_evaluations == 2  # the copy's prediction and its gradient row


def test_cascading_and_independent_over_both_layers():
    cascading, _, w, x, attribution = run_mprt({"order": "cascading"})
    independent, _, _, _, _ = run_mprt({"order": "independent"})
    drawn = hand_draws(1, [("W2", "b2", H), ("W1", "b1", F)])
    a = prepared(attribution, True)

    def rho(weights):
        return stats.spearmanr(a, prepared(np.abs(saliency_by_hand(weights, x.astype(np.float64), 2)), True))[0]

    top = {"W2": drawn["W2"], "b2": drawn["b2"]}
    bottom = {"W1": drawn["W1"], "b1": drawn["b1"]}
    np.testing.assert_allclose(cascading.value.curves["spearman"], [rho({**w, **top}), rho({**w, **top, **bottom})],
                               atol=1e-9)
    np.testing.assert_allclose(independent.value.curves["spearman"], [rho({**w, **top}), rho({**w, **bottom})],
                               atol=1e-9)
    # Same draws for the top layer in both orders; they part at the second step.
    assert cascading.value.curves["spearman"][0] == independent.value.curves["spearman"][0]
    assert cascading.value.value == cascading.value.curves["spearman"][-1]
    np.testing.assert_array_equal(cascading.value.curves["node"], [2, 0])
    assert cascading.stats.model_evaluations == 4


def test_seeded_determinism():
    first, _, _, _, _ = run_mprt({"init": "normal"}, seed=5)
    again, _, _, _, _ = run_mprt({"init": "normal"}, seed=5)
    other, _, _, _, _ = run_mprt({"init": "normal"}, seed=6)
    np.testing.assert_array_equal(first.value.curves["spearman"], again.value.curves["spearman"])
    assert not np.array_equal(first.value.curves["spearman"], other.value.curves["spearman"])


def test_normal_init_keeps_each_tensors_mean_and_scale():
    model, w = mlp()
    layer = parametrised_layers(model)[0]
    drawn = redraw(model, layer, "normal", np.random.default_rng(0))
    assert drawn["W1"].shape == (H, F) and drawn["W1"].dtype == np.float32
    assert abs(drawn["W1"].std() - w["W1"].std()) < 0.5 and not np.allclose(drawn["W1"], w["W1"])
    copy = with_parameters(model, drawn)
    assert np.array_equal(numpy_helper.to_array(copy.graph.initializer[0]), drawn["W1"])
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), w["W1"])  # the original untouched


def test_randomised_copies_release_their_sessions():
    served, _ = served_mlp()
    x = np.random.default_rng(9).normal(size=F).astype(np.float32)
    attribution = np.random.default_rng(1).normal(size=F)

    async def main() -> tuple[int, int, int, int]:
        engine = Engine(settings())
        peak = [0]
        scheduler = engine.scheduler

        def counted(served_model, spec):  # the sessions held while each stage runs
            made = scheduler(served_model, spec)
            peak[0] = max(peak[0], engine.sessions())
            return made

        engine.scheduler = counted  # type: ignore[method-assign]
        try:
            await run_metric(engine, served, MPRT(), {"layers": 1}, x, 2, attribution, score="logit",
                             method=Saliency(), kind="tabular", white_box=WHITE)
            before = engine.sessions()  # the original model's prediction
            outcome, _ = await run_metric(engine, served, MPRT(), {}, x, 2, attribution, score="logit",
                                          method=Saliency(), kind="tabular", white_box=WHITE)
            return before, peak[0], engine.sessions(), outcome.stats.model_evaluations
        finally:
            await engine.close()

    before, peak, after, evaluations = asyncio.run(main())
    # A copy's prediction and gradient sessions exist while it is explained, and go with it.
    assert before == 1 and peak == 3 and after == before and evaluations == 4


def test_parameters_are_checked():
    served, _ = served_mlp()
    view = view_of(served, kind="tabular", white_box=WHITE)
    with pytest.raises(InvalidArgument, match="mprt.layers"):
        MPRT().parameters({"layers": 3}, view, settings())
    with pytest.raises(InvalidArgument, match="mprt.order"):
        MPRT().parameters({"order": "bottom_up"}, view, settings())
    assert MPRT().planned_rows(MPRT().parameters({}, view, settings()), view, 1) == 4
    flat = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", F])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", F])]))
    assert "no parametrised layer" in MPRT().unavailable(view_of(served, kind="tabular", graph=flat))


def test_a_whole_request_through_the_explainer_releases_its_copies():
    """ExplainRequest.evaluate with mprt on the demo shapes model: the Explainer's re-explainer serves
    each randomised copy for its step alone; the session cache ends as the explanation left it."""
    from explaind.config import Settings
    from explaind.evaluation.run import MetricQuery
    from explaind.explainer import ExplainQuery, Explainer
    from explaind.models.repository import ModelRepository

    x = np.random.default_rng(2).normal(size=(3, 64, 64)).astype(np.float32)

    async def main():
        repo = ModelRepository(Settings().repository_path)
        repo.scan()
        engine = Engine(Settings(intra_op_threads=1))
        explainer = Explainer(engine.settings, repo, engine)
        try:
            plain = await explainer.explain(ExplainQuery("shapes", "saliency", tensor=x, seed=4))
            before = engine.sessions()
            query = ExplainQuery("shapes", "saliency", tensor=x, seed=4, metrics=[MetricQuery("mprt", {"layers": 3})])
            result = await explainer.explain(query)
            return plain, before, engine.sessions(), result
        finally:
            await engine.close()

    plain, before, after, result = asyncio.run(main())
    assert before == 2 and after == before  # the original's prediction and gradient sessions only
    (outcome,) = result.evaluation
    assert outcome.metric == "mprt" and outcome.parameters["layers"] == 3
    assert sorted(outcome.value.curves) == ["constant", "hog", "node", "spearman", "ssim"]
    assert len(outcome.value.curves["spearman"]) == 3 and outcome.stats.model_evaluations == 6
    np.testing.assert_array_equal(result.attribution, plain.attribution)  # the explanation itself unchanged
    assert -1 <= outcome.value.value < 0.99  # re-drawing the top three layers moves a saliency map


def test_the_proto_message_reaches_the_metric():
    from explaind_client.v1 import explaind_pb2 as pb

    from explaind.api.convert import metric_queries

    (query,) = metric_queries([pb.Metric(mprt=pb.MPRT(layers=1, abs=False, order="independent"))])
    served, _ = served_mlp()
    params = MPRT().parameters(query.params, view_of(served, kind="tabular", white_box=WHITE), settings())
    assert query.name == "mprt" and params == {"order": "independent", "layers": 1, "init": "uniform", "abs": False}


def test_a_constant_map_correlates_0_with_another_and_1_with_itself_where_scipy_gives_nan():
    """Spearman's rho of a constant map is 0 / 0: scipy (and so Quantus's correlation_spearman) give NaN;
    explaind defines 0 against a different map and 1 against an equal one, and flags the step."""
    from explaind.evaluation.mprt import similarities, spearman

    varied = np.arange(12, dtype=np.float64).reshape(3, 4)
    zeros = np.zeros((3, 4))
    with np.errstate(all="ignore"), pytest.warns(stats.ConstantInputWarning):
        assert np.isnan(stats.spearmanr(varied.ravel(), zeros.ravel())[0])
    assert spearman(varied, zeros) == 0.0 and spearman(zeros, varied) == 0.0
    assert spearman(zeros, zeros) == 1.0 and spearman(np.full((3, 4), 0.5), zeros) == 0.0
    assert spearman(varied, varied[::-1, ::-1]) == pytest.approx(-1.0)
    assert similarities(varied, zeros, True, False) == {"spearman": 0.0, "constant": 1.0}
    assert similarities(varied, varied * 2, True, False) == {"spearman": 1.0, "constant": 0.0}


def test_a_constant_judged_map_gives_a_defined_value_and_counts_its_steps():
    """The judged map all zero (as Grad-CAM's can be): every step's randomised saliency map varies, so
    every step correlates 0, is flagged constant, and the value is 0 (Quantus: NaN)."""
    outcome, params, w, x, _ = run_mprt({}, attribution=np.zeros(F))
    np.testing.assert_array_equal(outcome.value.curves["spearman"], [0.0, 0.0])
    np.testing.assert_array_equal(outcome.value.curves["constant"], [1.0, 1.0])
    assert outcome.value.value == 0.0 and outcome.value.figures == {"constant_steps": 2.0}
    varied, _, _, _, _ = run_mprt({})
    assert varied.value.figures == {"constant_steps": 0.0} and np.isfinite(varied.value.value)


def test_grad_cam_on_the_shapes_model_stays_defined_under_randomisation():
    """The case found by benchmarks/evaluation.py (NaN in the README's table before): Grad-CAM's map of a
    held-out shapes image on the fully randomised model is all zero (ReLU of a negative weighted sum)
    with this seed; the value is 0, the step flagged, and the other steps are ordinary correlations."""
    import io

    from PIL import Image

    from explaind.demo.shapes_data import make_dataset
    from explaind.evaluation.run import MetricQuery
    from explaind.explainer import ExplainQuery

    from inprocess import serve_requests

    images, labels, _ = make_dataset(1, seed=3)
    encoded = io.BytesIO()
    Image.fromarray(images[0]).save(encoded, format="PNG")
    (result,) = serve_requests(ExplainQuery("shapes", "grad_cam", image=encoded.getvalue(), seed=1,
                                            target_index=int(labels[0]), metrics=[MetricQuery("mprt", {})]))
    (outcome,) = result.evaluation
    curves = outcome.value.curves
    assert curves["constant"][-1] == 1 and outcome.value.value == 0.0
    assert np.isfinite(curves["spearman"]).all() and outcome.value.figures["constant_steps"] == curves["constant"].sum()
    varied = curves["constant"] == 0
    assert varied.any() and (np.abs(curves["spearman"][varied]) > 0).all()
