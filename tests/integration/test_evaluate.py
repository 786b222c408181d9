"""Evaluate, EvaluateStream, ListMetrics and ExplainRequest.evaluate on the real server: values checked
against a computation straight on the ONNX file with onnxruntime, and every bad input refused with
the right code and a message naming the field."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from explaind_client import Evaluation, Progress, build_evaluate_request, build_request
from explaind_client.v1 import explaind_pb2 as pb

from _server import DEMO, start_server, stop_server

SHAPES = DEMO / "repository" / "shapes"
BOXES = json.loads((DEMO / "examples" / "boxes.json").read_text())
EXAMPLE = "circle_0.png"


def preprocess(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png)).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    return ((np.asarray(img, np.float32) / 255.0 - 0.5) / 0.25).transpose(2, 0, 1).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def deletion_on_the_onnx_file(x: np.ndarray, attribution: np.ndarray, target: int, steps: int) -> np.ndarray:
    """Petsiuk et al.'s deletion loop, written from the paper: zero the most relevant pixels (all
    channels), `step` at a time, scoring the target's probability before each step and at the end."""
    session = ort.InferenceSession(str(SHAPES / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = attribution.size
    step = -(-pixels // steps)
    order = np.argsort(-attribution.reshape(-1), kind="stable")
    batch, current = [], x.copy()
    for i in range(-(-pixels // step) + 1):
        batch.append(current.copy())
        ys, xs = np.unravel_index(order[i * step:(i + 1) * step], attribution.shape)
        current[:, ys, xs] = 0.0
    logits = session.run(None, {"input": np.stack(batch)})[0].astype(np.float64)
    return softmax(logits)[:, target]


@pytest.fixture(scope="module")
def image() -> bytes:
    return (DEMO / "examples" / EXAMPLE).read_bytes()


def test_evaluate_grad_cam_with_deletion_insertion_and_the_pointing_game(client, image):
    box = BOXES[EXAMPLE]["box"]
    result = client.evaluate("shapes", method="grad_cam", image=image, box=box, seed=5,
                             metrics=["deletion", ("insertion", {"steps": 64}), "pointing_game"])
    assert isinstance(result, Evaluation)
    assert [r.metric for r in result.results] == ["deletion", "insertion", "pointing_game"]
    e = result.explanation
    assert e.stats["method"] == "grad_cam" and e.attribution.shape == (64, 64)

    deletion = result["deletion"]
    expected = deletion_on_the_onnx_file(preprocess(image), e.attribution, e.target_class, 100)
    np.testing.assert_allclose(deletion.curves["scores"], expected, rtol=1e-4, atol=1e-6)
    assert len(expected) == 101  # ceil(4096 / 41) = 100 steps and the input itself
    area = (expected.sum() - expected[0] / 2 - expected[-1] / 2) / 100
    assert deletion.value == pytest.approx(area, rel=1e-4)
    assert deletion.curves["scores"][0] == pytest.approx(e.top_classes[0].probability, rel=1e-5)
    assert int(deletion.stats["model_evaluations"]) == 101
    assert deletion.stats["method"] == "deletion" and deletion.stats["parameters"]["substrate"] == "zero"

    insertion = result["insertion"]
    assert len(insertion.curves["scores"]) == 65 and int(insertion.stats["model_evaluations"]) == 65
    assert insertion.curves["fractions"][0] == 0 and insertion.curves["fractions"][-1] == 1
    assert insertion.curves["scores"][-1] == pytest.approx(e.top_classes[0].probability, rel=1e-4)

    y, x = np.unravel_index(np.argmax(e.attribution), e.attribution.shape)
    x0, y0, x1, y1 = box
    assert result["pointing_game"].value == float(x0 <= x < x1 and y0 <= y < y1)
    assert int(result["pointing_game"].stats.get("model_evaluations", 0)) == 0  # (zero: left out of the dict)


def test_a_given_attribution_is_evaluated_as_it_is_and_gives_the_same_figures(client, image):
    computed = client.evaluate("shapes", method="saliency", image=image, metrics=["deletion"])
    given = client.evaluate("shapes", image=image, attribution=computed.explanation.attribution, metrics=["deletion"])
    assert given.explanation.stats["method"] == "attribution"
    assert int(given.explanation.stats["model_evaluations"]) == 1  # the prediction only
    np.testing.assert_array_equal(given.explanation.attribution, computed.explanation.attribution)
    assert given["deletion"].value == computed["deletion"].value


def test_explain_request_evaluate_gives_the_figures_beside_the_explanation(client, image):
    box = BOXES[EXAMPLE]["box"]
    explained = client.explain("shapes", method="grad_cam", image=image, evaluate=["deletion", "pointing_game"],
                               box=box)
    evaluated = client.evaluate("shapes", method="grad_cam", image=image, metrics=["deletion", "pointing_game"],
                                box=box)
    assert [r.metric for r in explained.evaluation] == ["deletion", "pointing_game"]
    np.testing.assert_array_equal(explained.attribution, evaluated.explanation.attribution)
    assert [r.value for r in explained.evaluation] == [r.value for r in evaluated.results]


def test_evaluate_stream_reports_progress_then_the_result(client, image):
    updates = list(client.evaluate_stream("shapes", method="rise", image=image, params={"num_masks": 300},
                                          metrics=[("deletion", {"steps": 500})]))
    progress = [u for u in updates if isinstance(u, Progress)]
    assert isinstance(updates[-1], Evaluation) and not any(isinstance(u, Evaluation) for u in updates[:-1])
    stages = [p.stage for p in progress]
    assert "explaining" in stages and "evaluating" in stages
    assert stages.index("evaluating") > max(i for i, s in enumerate(stages) if s == "explaining")
    last = [p for p in progress if p.stage == "evaluating"][-1]
    # ceil(4096 / 500) = 9 pixels a step: ceil(4096 / 9) = 456 steps and the input, 457 rows
    assert last.rows_done == last.rows_total == 457
    assert int(updates[-1]["deletion"].stats["model_evaluations"]) == 457


def test_list_metrics(client):
    names = [m.name for m in client.list_metrics()]
    assert {"deletion", "insertion", "pointing_game"} <= set(names)
    tabular = {m.name for m in client.list_metrics("tabular")}
    assert "deletion" in tabular and "pointing_game" not in tabular
    deletion = next(m for m in client.list_metrics() if m.name == "deletion")
    assert deletion.better == "lower" and deletion.category == "faithfulness"
    assert [p.name for p in deletion.parameters] == ["steps", "substrate", "order"]


def code_and_details(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_bad_evaluate_requests_are_refused_naming_the_field(client, image):
    cases = [
        (dict(model="shapes", method="saliency", image=image, metrics=[("deletion", {"steps": 0})]),
         grpc.StatusCode.INVALID_ARGUMENT, "deletion.steps: expected an integer in [1, 4096], got 0"),
        (dict(model="shapes", method="saliency", image=image, metrics=["pointing_game"], box=[0, 0, 65, 10]),
         grpc.StatusCode.INVALID_ARGUMENT, "region.box: expected 0 <= x0 < x1 <= 64"),
        (dict(model="shapes", method="saliency", image=image, metrics=["pointing_game"]),
         grpc.StatusCode.INVALID_ARGUMENT, "region: expected a box or a mask"),
        (dict(model="shapes", image=image, attribution=np.zeros((32, 32)), metrics=["deletion"]),
         grpc.StatusCode.INVALID_ARGUMENT, "attribution: expected shape [64, 64]"),
        (dict(model="shapes", image=image, attribution=np.full((64, 64), np.nan), metrics=["deletion"]),
         grpc.StatusCode.INVALID_ARGUMENT, "attribution: expected finite values"),
        (dict(model="shapes", method="saliency", image=image, metrics=[]),
         grpc.StatusCode.INVALID_ARGUMENT, "metrics: expected at least one metric"),
    ]
    for kwargs, code, start in cases:
        got, details = code_and_details(lambda: client.stub.Evaluate(build_evaluate_request(**kwargs), timeout=30))
        assert got == code and details.startswith(start), (kwargs.get("metrics"), got, details)


def test_a_region_or_a_localisation_metric_for_a_tabular_model_is_refused(client):
    row = np.load(DEMO / "repository" / "tabular" / "background.npy")[0].astype(np.float32)
    code, details = code_and_details(lambda: client.evaluate("tabular", method="occlusion", tensor=row,
                                                             metrics=["deletion"], box=[0, 0, 1, 1]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("region: expected no region for a tabular")
    code, details = code_and_details(lambda: client.evaluate("tabular", method="occlusion", tensor=row,
                                                             metrics=["pointing_game"]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "does not apply to tabular models" in details
    result = client.evaluate("tabular", method="occlusion", tensor=row, metrics=["deletion"])
    assert len(result["deletion"].curves["scores"]) == 1 + row.size


def test_metrics_over_the_row_budget_are_refused_before_any_work(repository, tmp_path, image):
    server = start_server(repository, tmp_path / "server.log", max_rows_per_request=5000)
    try:
        with server.client() as client:
            ok = client.evaluate("shapes", method="rise", image=image, params={"num_masks": 4000},
                                 metrics=["deletion"])
            assert int(ok["deletion"].stats["model_evaluations"]) == 101
            code, details = code_and_details(lambda: client.evaluate(
                "shapes", method="rise", image=image, params={"num_masks": 4000},
                metrics=[("deletion", {"steps": 4096})]))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "need 8098 model evaluations" in details and "max_rows_per_request of 5000" in details
    finally:
        assert stop_server(server) == 0


def rows_evaluated(server) -> float:
    """The server's explaind_rows counter summed over models and variants: every row the model ran."""
    import re
    import urllib.request

    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^explaind_rows_total\{[^}]*\} (\S+)$', text, re.M))


# Each method's own parameters kept small, so the explanation alone fits the budget and the metric does not.
LIGHT = {"rise": {"num_masks": 40}, "smooth_grad": {"num_samples": 7}, "integrated_gradients": {"n_steps": 9},
         "extremal_perturbation": {"iterations": 3, "areas": [0.1]}, "lime": {"num_samples": 40},
         "kernel_shap": {"nsamples": 40}, "occlusion": {"window": [16], "stride": [16]},
         "smooth_grad_cam_plus_plus": {"num_samples": 5}}
FORWARD_ONLY = ("cam", "eigen_cam", "feature_maps")  # the prediction's pass is the whole explanation


def test_a_re_explaining_metric_over_the_budget_is_refused_before_any_row_for_every_method(repository, tmp_path,
                                                                                          image):
    """max_sensitivity with 1500 re-explanations, over a budget of 3000 rows for every method costing a
    row or more (2 rows each at least) though not if its rows were taken as unknown (1 row each, the
    prediction): refused with RESOURCE_EXHAUSTED naming the metric, and not one row run (the prediction
    included). CAM, Eigen-CAM and feature_maps (the demo has no gates) cost nothing beyond the prediction:
3000 re-explanations are over too."""
    server = start_server(repository, tmp_path / "server.log", max_rows_per_request=3000)
    row = np.load(DEMO / "repository" / "tabular" / "background.npy")[0].astype(np.float32)
    try:
        with server.client() as client:
            cases = [("shapes", m.name, {"image": image, "params": LIGHT.get(m.name, {})})
                     for m in client.list_methods("shapes")]
            cases += [("tabular", m, {"tensor": row, "params": p}) for m, p in
                      (("occlusion", {}), ("lime", {"num_samples": 50}),
                       ("kernel_shap", {"nsamples": 30, "background_kmeans": 3}))]
            assert len(cases) >= 19
            for model, method, given in cases:
                heavy = [("max_sensitivity", {"nr_samples": 3000 if method in FORWARD_ONLY else 1500})]
                before = rows_evaluated(server)
                code, details = code_and_details(lambda: client.evaluate(
                    model, method=method, metrics=heavy, **given))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, details)
                assert "max_sensitivity" in details and "max_rows_per_request of 3000" in details, details
                assert rows_evaluated(server) == before, f"{model} {method}: rows ran before the refusal"
            before = rows_evaluated(server)  # the counter does count: an allowed request moves it
            ok = client.evaluate("shapes", method="occlusion", image=image, params=LIGHT["occlusion"],
                                 metrics=[("max_sensitivity", {"nr_samples": 2})])
            assert int(ok["max_sensitivity"].stats["model_evaluations"]) == 2 * (17 + 1)
            assert rows_evaluated(server) == before + 1 + 17 + 2 * 18
    finally:
        assert stop_server(server) == 0


def test_cli_evaluate(server, image, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(image)
    box = ",".join(str(v) for v in BOXES[EXAMPLE]["box"])
    command = [sys.executable, "-m", "explaind.cli", "evaluate", "--server", server.address, "--model", "shapes",
               "--image", str(path), "--method", "grad_cam", "--metric", "deletion", "--metric", "pointing_game",
               "--box", box, "--metric-param", "deletion.steps=32"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "METRIC" in out.stdout and "deletion" in out.stdout and "pointing_game" in out.stdout
    as_json = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=120)
    parsed = json.loads(as_json.stdout)
    assert [r["metric"] for r in parsed["results"]] == ["deletion", "pointing_game"]
    assert len(parsed["results"][0]["curves"]["scores"]) == 33
    bad = subprocess.run(command[:-2] + ["--metric-param", "deletion.nope=1"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "deletion has no such parameter" in bad.stderr


def test_explain_requests_without_metrics_are_unchanged(client, image):
    request = build_request("shapes", method="saliency", image=image)
    response = client.stub.Explain(request, timeout=30)
    assert len(response.evaluation) == 0 and response.stats.model_evaluations == 2
    assert pb.ExplainResponse.DESCRIPTOR.fields_by_name["evaluation"].number == 13


def queued_rows(server) -> float:
    import re
    import urllib.request

    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^explaind_queue_rows\{[^}]*\} (\S+)$', text, re.M))


def test_deadline_and_cancellation_stop_the_metrics(server, client, image):
    from _server import wait_until

    heavy = [("deletion", {"steps": 4096}), ("insertion", {"steps": 4096})]
    # Past the deadline while the metrics run (or refused at once once their cost is known): no answer.
    code, _ = code_and_details(lambda: client.evaluate("shapes", method="saliency", image=image, metrics=heavy,
                                                       timeout=0.5))
    assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert wait_until(lambda: queued_rows(server) == 0, 30), "the expired metrics' rows stayed queued"

    stream = client.stub.EvaluateStream(build_evaluate_request("shapes", method="saliency", image=image,
                                                               metrics=heavy))
    for update in stream:
        if update.WhichOneof("kind") == "progress" and update.progress.stage == "evaluating" \
                and update.progress.rows_done > 0:
            break
    stream.cancel()
    assert wait_until(lambda: queued_rows(server) == 0, 30), "the cancelled metrics' rows stayed queued"
    assert server.health() == "SERVING"


def test_metric_stats_say_the_score_the_metric_used(client, image):
    """Metrics score probabilities unless the request asks for logits, whatever the method used."""
    result = client.evaluate("shapes", method="saliency", image=image, metrics=[("deletion", {"steps": 8})])
    assert result.explanation.stats["score"] == "LOGIT" and result["deletion"].stats["score"] == "PROBABILITY"
    assert 0 <= min(result["deletion"].curves["scores"]) and max(result["deletion"].curves["scores"]) <= 1
    logits = client.evaluate("shapes", method="saliency", image=image, score="logit",
                             metrics=[("deletion", {"steps": 8})])
    assert logits["deletion"].stats["score"] == "LOGIT" and max(logits["deletion"].curves["scores"]) > 1


def test_a_map_with_channels_is_judged_summed_over_them(client, image):
    """input_x_gradient keeps the channels ([3, 64, 64]); the metrics judge their sum per pixel."""
    box = BOXES[EXAMPLE]["box"]
    metrics = [("deletion", {"steps": 16}), "pointing_game", ("max_sensitivity", {"nr_samples": 2})]
    result = client.evaluate("shapes", method="input_x_gradient", image=image, box=box, metrics=metrics, seed=3)
    assert result.explanation.attribution.shape == (3, 64, 64)
    summed = result.explanation.attribution.sum(axis=0)
    given = client.evaluate("shapes", image=image, attribution=summed, box=box, metrics=metrics[:2], seed=3)
    assert result["deletion"].value == pytest.approx(given["deletion"].value, rel=1e-6)
    assert result["pointing_game"].value == given["pointing_game"].value
    assert result["max_sensitivity"].value >= 0
