"""Pixel flipping through the real engine on linear ONNX models, against Quantus's loop written out
in numpy (flip the next k pixels to the baseline of the image as it stands, score)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from explaind.errors import InvalidArgument
from explaind.evaluation.pixel_flipping import PixelFlipping

from _linear import linear_score, served_linear
from inprocess import evaluate


def flipping_curve(weights, x, target, score, attribution, step, baseline):
    order = np.argsort(-attribution.reshape(-1), kind="stable")
    current = x.astype(np.float64).reshape(x.shape[0] if x.ndim == 3 else 1, -1).copy()
    scores = []
    for i in range(-(-len(order) // step)):
        value = {"black": current.min(), "white": current.max(), "mean": current.mean(), "zero": 0.0}[baseline]
        current[:, order[i * step:(i + 1) * step]] = value
        scores.append(linear_score(weights, current.reshape(x.shape), target, score))
    scores = np.array(scores)
    return scores, sum((scores[i] + scores[i + 1]) / 2 for i in range(len(scores) - 1))


@pytest.mark.parametrize("baseline", ["black", "mean", "white", "zero"])
def test_the_curve_and_its_trapezoid_area(baseline):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 6, 7)).astype(np.float32)
    attribution = rng.normal(size=(6, 7))
    served, weights = served_linear("lin", (3, 6, 7), 4, max_batch_rows=4)
    outcome, params = evaluate(PixelFlipping(), {"features_in_step": 5, "baseline": baseline}, served, x, 2,
                               attribution)
    assert params == {"features_in_step": 5, "baseline": baseline}
    scores, area = flipping_curve(weights, x, 2, "probability", attribution, 5, baseline)
    assert len(scores) == 9  # ceil(42 / 5)
    np.testing.assert_allclose(outcome.value.curves["scores"], scores, rtol=1e-5, atol=1e-6)
    assert outcome.value.value == pytest.approx(area, rel=1e-5)
    np.testing.assert_allclose(outcome.value.curves["fractions"], np.minimum(np.arange(1, 10) * 5, 42) / 42)
    assert outcome.stats.model_evaluations == 9 and outcome.stats.batches == 3


def test_default_step_is_a_hundredth_and_tabular_features():
    served, _ = served_linear("lin", (1, 20, 20), 3, max_batch_rows=64)
    outcome, params = evaluate(PixelFlipping(), {}, served, np.ones((1, 20, 20), np.float32), 0, np.eye(20))
    assert params["features_in_step"] == 4 and outcome.stats.model_evaluations == 100
    rng = np.random.default_rng(8)
    x, attribution = rng.normal(size=6).astype(np.float32), rng.normal(size=6)
    tab, weights = served_linear("tab", (6,), 3)
    outcome, params = evaluate(PixelFlipping(), {}, tab, x, 1, attribution, kind="tabular", score="logit")
    assert params["features_in_step"] == 1
    scores, area = flipping_curve(weights, x, 1, "logit", attribution, 1, "black")
    np.testing.assert_allclose(outcome.value.curves["scores"], scores, rtol=1e-5, atol=1e-5)
    assert outcome.value.value == pytest.approx(area, rel=1e-5)


def test_parameter_checks_name_the_field():
    served, _ = served_linear("lin", (3, 6, 7), 4)
    x, a = np.zeros((3, 6, 7), np.float32), np.zeros((6, 7))
    with pytest.raises(InvalidArgument) as err:
        evaluate(PixelFlipping(), {"features_in_step": 0}, served, x, 0, a)
    assert err.value.message.startswith("pixel_flipping.features_in_step: expected an integer in [1, 42], got 0")
    with pytest.raises(InvalidArgument) as err:
        evaluate(PixelFlipping(), {"baseline": "grey"}, served, x, 0, a)
    assert err.value.message == "pixel_flipping.baseline: expected one of black, white, mean, zero, got 'grey'"


def test_channels_last_models_flip_the_same_pixels():
    """NHWC: the same model with its weights permuted gives the NCHW curve (pixels are positions)."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3, 6, 7)).astype(np.float32)
    attribution = rng.normal(size=(6, 7))
    nchw, weights = served_linear("lin", (3, 6, 7), 4, max_batch_rows=64)
    nhwc, _ = served_linear("lin_hwc", (6, 7, 3), 4, layout="NHWC", max_batch_rows=64)
    permuted = weights.reshape(3, 6, 7, 4).transpose(1, 2, 0, 3).reshape(-1, 4)
    nhwc.model.graph.initializer[0].CopyFrom(numpy_helper.from_array(permuted, "W"))
    for baseline in ("mean", "white"):
        ours, _ = evaluate(PixelFlipping(), {"features_in_step": 3, "baseline": baseline}, nhwc,
                           x.transpose(1, 2, 0), 1, attribution)
        scores, _ = flipping_curve(weights, x, 1, "probability", attribution, 3, baseline)
        np.testing.assert_allclose(ours.value.curves["scores"], scores, rtol=1e-5, atol=1e-6)
