"""Method lrp on the real server: values against the relevance graph run directly, streaming,
parameter validation, GetModel's rule families, and a model whose graph has no relevance rule."""

from __future__ import annotations

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from explaind.onnxgraph.autodiff.lrp import Composite, relevance_graph
from explaind_client import build_request

from _server import DEMO, start_server, stop_server

SHAPES = DEMO / "repository" / "shapes"
# shapes' preprocessing: pixels / 255, then (p - 0.5) / 0.25: the input lies in [-2, 2]
LOW, HIGH = np.full((1, 3, 1, 1), -2.0, np.float32), np.full((1, 3, 1, 1), 2.0, np.float32)


def _x() -> np.ndarray:
    return np.random.default_rng(4).uniform(-2, 2, (3, 64, 64)).astype(np.float32)


def _direct(composite: str, x: np.ndarray, target: int) -> tuple[np.ndarray, float]:
    """The relevance graph of the model file run by onnxruntime alone, seeded with the target's logit."""
    model = onnx.load(SHAPES / "model.onnx")
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x[None]})[0][0]
    derived = relevance_graph(model, "logits", "input", Composite(composite, low=LOW, high=HIGH), seed_name="s",
                              grad_prefix="r::")
    seed = np.zeros((1, len(logits)), np.float32)
    seed[0, target] = logits[target]
    session = ort.InferenceSession(derived.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["r::input"], {"input": x[None], "s": seed})[0][0], float(logits[target])


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus_flat", "deep_taylor"])
def test_lrp_equals_the_relevance_graph_run_directly(client, composite):
    x = _x()
    result = client.explain("shapes", method="lrp", tensor=x, target=2, params={"composite": composite})
    expected, logit = _direct(composite, x, 2)
    np.testing.assert_allclose(result.attribution, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert result.figures["target_relevance"] == pytest.approx(logit, rel=1e-5)
    assert result.figures["relevance_sum"] == pytest.approx(float(expected.sum()), rel=1e-3, abs=1e-5)
    assert result.stats["parameters"]["composite"] == composite
    assert int(result.stats["model_evaluations"]) == 2  # the prediction and one relevance row


def test_lrp_streams_the_same_result_and_contrastive_rows(client):
    x = _x()
    updates = list(client.explain_stream("shapes", method="lrp", tensor=x, target=1,
                                         params={"contrast": "clrp", "channel_reduction": "sum"}))
    final = updates[-1]
    unary = client.explain("shapes", method="lrp", tensor=x, target=1, params={"contrast": "clrp",
                                                                               "channel_reduction": "sum"})
    np.testing.assert_array_equal(final.attribution, unary.attribution)
    assert final.attribution.shape == (64, 64) and final.attribution.min() >= 0  # CLRP keeps max(0, .)
    assert int(unary.stats["model_evaluations"]) == 3


def _error(client, method_params: dict, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Explain(build_request("shapes", method="lrp", params=method_params, tensor=_x(), **kwargs))
    return err.value


@pytest.mark.parametrize(("params", "kwargs", "words"), [
    ({"composite": "zennit"}, {}, ["lrp.composite", "epsilon_plus_flat", "zennit"]),
    ({"epsilon": -1.0}, {}, ["lrp.epsilon", "-1"]),
    ({"gamma": float("nan")}, {}, ["lrp.gamma", "finite"]),
    ({"contrast": "dual"}, {}, ["lrp.contrast", "clrp", "dual"]),
    ({"layer_rules": "nowhere=gamma"}, {}, ["lrp.layer_rules", "Conv", "nowhere"]),
    ({"layer_rules": "/features/features.0/Conv=sideways"}, {}, ["lrp.layer_rules", "zplus", "sideways"]),
    ({"layer_rules": "gamma"}, {}, ["lrp.layer_rules", "layer=rule", "gamma"]),
    ({}, {"score": "probability"}, ["score", "logit", "probability"]),
])
def test_bad_parameters_are_invalid_arguments(client, params, kwargs, words):
    err = _error(client, params, **kwargs)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    for word in words:
        assert word in err.details(), (word, err.details())


def test_layer_rules_by_node_name_change_the_answer(client):
    x = _x()
    conv = next(n.name for n in onnx.load(SHAPES / "model.onnx").graph.node if n.op_type == "Conv")
    plain = client.explain("shapes", method="lrp", tensor=x, target=0, params={"composite": "epsilon_plus"})
    flat = client.explain("shapes", method="lrp", tensor=x, target=0,
                          params={"composite": "epsilon_plus", "layer_rules": f"{conv}=flat"})
    assert not np.allclose(plain.attribution, flat.attribution)
    assert flat.stats["parameters"]["layer_rules"] is not None


def test_get_model_reports_rule_families(client):
    shapes = client.get_model("shapes")
    assert list(shapes.rule_families) == ["plain", "guided", "deconvnet", "deep_lift", "rect_grad", "excitation",
                                          "excitation_contrastive", "lrp"] and shapes.lrp_reason == ""
    assert "lrp" in shapes.methods
    tabular = client.get_model("tabular")
    assert list(tabular.rule_families) == [] and "TreeEnsembleClassifier" in tabular.lrp_reason
    assert "lrp" not in tabular.methods


def _gated_model() -> onnx.ModelProto:
    """Conv -> Relu -> r * sigmoid(mean(r)) (squeeze-and-excitation-style gating: a product of two
    activations, the gate not element-wise in r) -> pool -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["squeezed"], name="squeeze"),
             helper.make_node("Sigmoid", ["squeezed"], ["s"], name="gate"),
             helper.make_node("Mul", ["r", "s"], ["m"], name="gating"),
             helper.make_node("GlobalAveragePool", ["m"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "gated", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def gated_client(tmp_path_factory):
    """A server of its own on a repository holding the gated model alone (the session's repository
    keeps the demo's model list)."""
    repo = tmp_path_factory.mktemp("gated") / "models"
    folder = repo / "gated"
    folder.mkdir(parents=True)
    onnx.save(_gated_model(), folder / "model.onnx")
    (folder / "model.yaml").write_text("kind: image\ninput: {name: input, layout: NCHW}\n"
                                       "output: {name: logits, scores: logits}\n"
                                       "preprocess: {size: [16, 16], scale: 255, mean: [0, 0, 0], std: [1, 1, 1]}\n")
    server = start_server(repo, tmp_path_factory.mktemp("gated-logs") / "server.log")
    try:
        with server.client() as c:
            yield c
    finally:
        assert stop_server(server) == 0, server.log()


def test_a_model_without_a_relevance_rule_refuses_lrp_but_serves_gradients(gated_client):
    client = gated_client
    info = client.get_model("gated")
    assert info.white_box and "lrp" not in info.rule_families and "plain" in info.rule_families
    assert "Mul" in info.lrp_reason and "gating" in info.lrp_reason
    assert "saliency" in info.methods and "lrp" not in info.methods
    x = np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Explain(build_request("gated", method="lrp", tensor=x))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Mul" in err.value.details() and "'gating'" in err.value.details()
    saliency = client.explain("gated", method="saliency", tensor=x)
    assert np.abs(saliency.attribution).max() > 0
