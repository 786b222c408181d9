"""Activation maximisation through the real server and the Python client (the shared demo server).

Streamed progress to steps + 1 rows (the steps, the final point; the prediction is one more model
evaluation), partial images, the same answer unary and streamed for one seed, the PNG being the
attribution as an image, the synthesised input classified as its target, the learned prior (the
demo's generator), and bad parameters refused with INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import io

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from _server import DEMO

SHAPES = DEMO / "repository" / "shapes"
START = np.zeros((3, 64, 64), np.float32)


def probabilities(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(SHAPES / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x[None].astype(np.float32)})[0][0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_activation_maximization_streams_and_synthesises_the_target(client):
    params = {"steps": 60}
    updates = list(client.explain_stream("shapes", method="activation_maximization", tensor=START, target=4, seed=9,
                                         params=params))
    progress = [u for u in updates if type(u).__name__ == "Progress"]
    partials = [u for u in updates if getattr(u, "partial", False)]
    final = updates[-1]
    assert progress[-1].rows_done == progress[-1].rows_total == 61  # the steps and the final point
    assert len(partials) >= 5 and partials[0].attribution.shape == (3, 64, 64)
    assert final.target_label == "star" and final.attribution.shape == (3, 64, 64)
    unary = client.explain("shapes", method="activation_maximization", tensor=START, target=4, seed=9, params=params,
                           render=True)
    np.testing.assert_array_equal(unary.attribution, final.attribution)
    assert probabilities(final.attribution)[4] >= 0.99
    assert final.figures["final_probability"] == pytest.approx(probabilities(final.attribution)[4], abs=1e-4)
    curve = final.arrays["score_curve"]
    assert curve.shape == (61,) and curve[-1] > curve[0]
    assert final.heatmap_png == b""  # no render asked
    pixels = np.asarray(Image.open(io.BytesIO(unary.heatmap_png)).convert("RGB")).astype(np.int64)
    expected = np.clip((final.attribution * 0.25 + 0.5) * 255, 0, 255).round().transpose(1, 2, 0)
    assert np.abs(pixels - expected).max() <= 1 and (pixels == expected).mean() > 0.999  # float32 rounding ties
    np.testing.assert_allclose(final.arrays["image"], (final.attribution * 0.25 + 0.5).transpose(1, 2, 0), atol=1e-6)
    assert int(final.stats["model_evaluations"]) == 62


def test_activation_maximization_with_the_learned_prior(client):
    result = client.explain("shapes", method="activation_maximization", tensor=START, target=0, seed=2,
                            params={"parameterization": "generator"})
    assert result.arrays["code"].shape == (32,)
    assert probabilities(result.attribution)[0] >= 0.99


@pytest.mark.parametrize("params,field", [
    ({"objective": "channel", "layer": "no/such/tensor"}, "layer"),
    ({"parameterization": "generator", "jitter": 2}, "jitter"),
    ({"steps": 0}, "steps"),
    ({"objective": "neuron", "position": [99, 0]}, "position"),
])
def test_activation_maximization_refuses_bad_parameters(client, params, field):
    with pytest.raises(grpc.RpcError) as error:
        client.explain("shapes", method="activation_maximization", tensor=START, params=params)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"activation_maximization.{field}" in error.value.details()
