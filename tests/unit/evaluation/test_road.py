"""ROAD through the real engine on linear ONNX models: the imputation (without noise) against the
linear system solved densely in numpy, the kept curve against the model's argmax; the noise seeded."""

from __future__ import annotations

import numpy as np
import pytest

from explaind.errors import InvalidArgument
from explaind.evaluation.road import Road

from _linear import linear_score, served_linear, softmax
from inprocess import evaluate

WEIGHTS = {(0, 1): 1 / 6, (0, -1): 1 / 6, (1, 0): 1 / 6, (-1, 0): 1 / 6,
           (1, 1): 1 / 12, (1, -1): 1 / 12, (-1, 1): 1 / 12, (-1, -1): 1 / 12}


def imputed(x, removed):
    """Each removed pixel = the weighted mean of its neighbours inside the image (dense solve)."""
    channels, height, width = x.shape
    index = {int(p): i for i, p in enumerate(removed)}
    n = len(removed)
    out = x.astype(np.float64).copy()
    for c in range(channels):
        a, b = np.zeros((n, n)), np.zeros(n)
        for i, p in enumerate(removed):
            r, col = divmod(int(p), width)
            total = 0.0
            for (dr, dc), w in WEIGHTS.items():
                rr, cc = r + dr, col + dc
                if 0 <= rr < height and 0 <= cc < width:
                    total += w
                    q = rr * width + cc
                    if q in index:
                        a[i, index[q]] -= w
                    else:
                        b[i] += w * x[c, rr, cc]
            a[i, i] += total
        out[c].reshape(-1)[removed] = np.linalg.solve(a, b)
    return out


def test_noiseless_imputation_and_the_kept_curve():
    rng = np.random.default_rng(51)
    x = rng.normal(size=(2, 6, 6)).astype(np.float32)
    attribution = rng.normal(size=(6, 6))
    served, weights = served_linear("lin", (2, 6, 6), 3, max_batch_rows=4)
    target = int(np.argmax(x.reshape(-1) @ weights))
    percentages = [10.0, 30.0, 50.0, 90.0]
    outcome, params = evaluate(Road(), {"percentages": percentages, "noise": 0.0}, served, x, target, attribution)
    assert params == {"percentages": percentages, "noise": 0.0}
    order = np.argsort(-attribution.reshape(-1), kind="stable")
    scores, kept = [], []
    for p in percentages:
        image = imputed(x, order[:int(36 * p / 100)])
        scores.append(linear_score(weights, image, target, "probability"))
        kept.append(float(np.argmax(softmax(image.reshape(-1) @ weights)) == target))
    np.testing.assert_allclose(outcome.value.curves["scores"], scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outcome.value.curves["kept"], kept)
    assert outcome.value.value == pytest.approx(np.mean(kept))
    assert outcome.stats.model_evaluations == 4 and outcome.stats.batches == 1


def test_defaults_and_seeded_noise():
    rng = np.random.default_rng(52)
    x = rng.normal(size=(1, 10, 10)).astype(np.float32)
    attribution = rng.normal(size=(10, 10))
    served, weights = served_linear("lin", (1, 10, 10), 2, max_batch_rows=64)
    first, params = evaluate(Road(), {}, served, x, 0, attribution, score="logit")
    assert params["percentages"] == list(range(1, 100, 2)) and params["noise"] == pytest.approx(0.01)
    assert first.stats.model_evaluations == 50
    again, _ = evaluate(Road(), {}, served, x, 0, attribution, score="logit")
    np.testing.assert_array_equal(first.value.curves["scores"], again.value.curves["scores"])
    quiet, _ = evaluate(Road(), {"noise": 0.0}, served, x, 0, attribution, score="logit")
    gap = np.abs(first.value.curves["scores"] - quiet.value.curves["scores"])
    # The noise moves each imputed pixel by about 0.01: the logit by about 0.01 |w| sqrt(k).
    assert 0 < gap.max() < 1.0 and gap[0] > 0


def test_parameter_checks_name_the_field():
    served, _ = served_linear("lin", (1, 4, 4), 2)
    x, a = np.zeros((1, 4, 4), np.float32), np.zeros((4, 4))
    with pytest.raises(InvalidArgument) as err:
        evaluate(Road(), {"percentages": [10.0, 120.0]}, served, x, 0, a)
    assert err.value.message.startswith("road.percentages: expected numbers in [0, 100]")
    with pytest.raises(InvalidArgument) as err:
        evaluate(Road(), {"noise": -1.0}, served, x, 0, a)
    assert err.value.message.startswith("road.noise")


def test_channels_last_rows():
    rng = np.random.default_rng(53)
    x = rng.normal(size=(3, 5, 5)).astype(np.float32)
    attribution = rng.normal(size=(5, 5))
    nhwc, weights = served_linear("lin_hwc", (5, 5, 3), 3, layout="NHWC", max_batch_rows=64)
    outcome, _ = evaluate(Road(), {"percentages": [20.0, 60.0], "noise": 0.0}, nhwc, x.transpose(1, 2, 0), 0,
                          attribution)
    order = np.argsort(-attribution.reshape(-1), kind="stable")
    expected = [linear_score(weights, imputed(x, order[:k]).transpose(1, 2, 0), 0, "probability") for k in (5, 15)]
    np.testing.assert_allclose(outcome.value.curves["scores"], expected, rtol=1e-5, atol=1e-6)
