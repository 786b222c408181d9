"""The faithfulness metrics of the second wave through the real server: each answers with its curves
and its stats, pixel flipping's curve checked against a computation straight on the ONNX file, the
sampled ones reproducible from the seed, and the image-only ones refused for a tabular model."""

from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from explaind_client import Evaluation, Progress

from test_evaluate import EXAMPLE, SHAPES, preprocess, softmax
from _server import DEMO

METRICS = [("pixel_flipping", {}), ("irof", {}), ("road", {"percentages": [10.0, 50.0, 90.0]}),
           ("faithfulness_correlation", {"nr_runs": 20}), ("sensitivity_n", {"steps": 2, "nr_samples": 10}),
           ("infidelity", {"patch_size": 16})]


@pytest.fixture(scope="module")
def image() -> bytes:
    return (DEMO / "examples" / EXAMPLE).read_bytes()


def test_every_faithfulness_metric_through_the_server(client, image):
    result = client.evaluate("shapes", method="saliency", image=image, seed=3, metrics=METRICS)
    assert [r.metric for r in result.results] == [name for name, _ in METRICS]
    e = result.explanation
    flipping = result["pixel_flipping"]
    assert int(flipping.stats["model_evaluations"]) == 100  # ceil(4096 / 100) = 41 pixels a step
    session = ort.InferenceSession(str(SHAPES / "model.onnx"), providers=["CPUExecutionProvider"])
    x = preprocess(image)
    order = np.argsort(-e.attribution.reshape(-1), kind="stable")
    current, batch = x.copy(), []
    for i in range(100):
        ys, xs = np.unravel_index(order[i * 41:(i + 1) * 41], (64, 64))
        current[:, ys, xs] = x.min()
        batch.append(current.copy())
    expected = softmax(session.run(None, {"input": np.stack(batch)})[0].astype(np.float64))[:, e.target_class]
    np.testing.assert_allclose(flipping.curves["scores"], expected, rtol=1e-4, atol=1e-6)
    assert flipping.value == pytest.approx(np.trapezoid(expected), rel=1e-4)
    assert len(result["road"].curves["kept"]) == 3 and int(result["road"].stats["model_evaluations"]) == 3
    assert int(result["infidelity"].stats["model_evaluations"]) == 16
    assert len(result["sensitivity_n"].curves["correlations"]) == 2
    assert int(result["irof"].stats["model_evaluations"]) == int(result["irof"].figures["segment_count"])
    again = client.evaluate("shapes", method="saliency", image=image, seed=3, metrics=METRICS)  # same positions
    assert again["faithfulness_correlation"].value == result["faithfulness_correlation"].value
    assert again["sensitivity_n"].value == result["sensitivity_n"].value


def test_irof_plans_the_rows_it_runs_so_its_progress_reaches_one(client, image):
    """IROF segments the input at planning: the streamed progress ends at fraction 1, its total the
    segment count, which is what the metric ran."""
    updates = list(client.evaluate_stream("shapes", method="saliency", image=image, metrics=["irof"]))
    assert isinstance(updates[-1], Evaluation)
    evaluating = [u for u in updates if isinstance(u, Progress) and u.stage == "evaluating"]
    irof = updates[-1]["irof"]
    count = int(irof.figures["segment_count"])
    assert count > 5 and int(irof.stats["model_evaluations"]) == count
    assert {p.rows_total for p in evaluating} == {count}
    assert evaluating[-1].rows_done == count and evaluating[-1].fraction == 1.0


def test_tabular_metrics_and_the_image_only_ones_refused(client):
    row = np.load(DEMO / "repository" / "tabular" / "background.npy")[0].astype(np.float32)
    result = client.evaluate("tabular", method="occlusion", tensor=row, seed=2,
                             metrics=["pixel_flipping", "faithfulness_correlation", "infidelity"])
    assert len(result["pixel_flipping"].curves["scores"]) == row.size  # one feature a step
    assert int(result["infidelity"].stats["model_evaluations"]) == row.size
    assert np.isfinite(result["faithfulness_correlation"].value)
    for name in ("irof", "road"):
        with pytest.raises(grpc.RpcError) as err:
            client.evaluate("tabular", method="occlusion", tensor=row, metrics=[name])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"metric {name!r} does not apply to tabular models" in err.value.details()
