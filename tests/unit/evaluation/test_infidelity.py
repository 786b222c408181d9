"""Infidelity through the real engine on linear ONNX models, against Quantus's definition written out
in numpy: patches removed one after the other, (a . (x - x_k) - (f(x) - f(x_k)))^2 averaged."""

from __future__ import annotations

import numpy as np
import pytest

from explaind.errors import InvalidArgument
from explaind.evaluation.infidelity import Infidelity

from _linear import linear_score, served_linear
from inprocess import evaluate


def infidelity(weights, x, target, score, attribution, patch, baseline="black"):
    channels = x.shape[0]
    height, width = attribution.shape
    current = x.astype(np.float64).copy()
    errors = []
    for top in range(0, height, patch):
        for left in range(0, width, patch):
            value = current.min() if baseline == "black" else current.mean()
            current[:, top:top + patch, left:left + patch] = value
            drop = linear_score(weights, x, target, score) - linear_score(weights, current, target, score)
            dot = float((attribution[None] * (x - current)).sum())
            errors.append((dot - drop) ** 2)
    assert channels == x.shape[0]
    return float(np.mean(errors)), len(errors)


@pytest.mark.parametrize("baseline", ["black", "mean"])
def test_mean_squared_gap_over_the_patches(baseline):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 8, 8)).astype(np.float32)
    attribution = rng.normal(size=(8, 8))
    served, weights = served_linear("lin", (2, 8, 8), 3, max_batch_rows=8)
    outcome, params = evaluate(Infidelity(), {"baseline": baseline}, served, x, 1, attribution, score="logit")
    assert params == {"patch_size": 4, "baseline": baseline}
    value, patches = infidelity(weights, x, 1, "logit", attribution, 4, baseline)
    assert patches == 4 and outcome.stats.model_evaluations == 4
    assert outcome.value.value == pytest.approx(value, rel=1e-5)


def test_edge_patches_are_smaller_and_exact_maps_score_zero():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(1, 5, 7)).astype(np.float32)
    served, weights = served_linear("lin", (1, 5, 7), 2, max_batch_rows=64)
    attribution = rng.normal(size=(5, 7))
    outcome, _ = evaluate(Infidelity(), {"patch_size": 3}, served, x, 0, attribution)
    value, patches = infidelity(weights, x, 0, "probability", attribution, 3)
    assert patches == 6 and outcome.stats.model_evaluations == 6
    assert outcome.value.value == pytest.approx(value, rel=1e-5)
    # On a linear model's logit the map of its weights predicts every drop exactly: infidelity 0.
    exact = weights[:, 0].reshape(5, 7).astype(np.float64)
    outcome, _ = evaluate(Infidelity(), {"patch_size": 2}, served, x, 0, exact, score="logit")
    assert outcome.value.value == pytest.approx(0.0, abs=1e-8)


def test_tabular_features_one_at_a_time():
    rng = np.random.default_rng(13)
    x, attribution = rng.normal(size=6).astype(np.float32), rng.normal(size=6)
    tab, weights = served_linear("tab", (6,), 3)
    outcome, params = evaluate(Infidelity(), {}, tab, x, 2, attribution, kind="tabular")
    assert params["patch_size"] == 1
    current, errors = x.astype(np.float64).copy(), []
    for i in range(6):
        current[i] = current.min()
        drop = linear_score(weights, x, 2, "probability") - linear_score(weights, current, 2, "probability")
        errors.append((float(attribution @ (x - current)) - drop) ** 2)
    assert outcome.value.value == pytest.approx(np.mean(errors), rel=1e-5)
    with pytest.raises(InvalidArgument) as err:
        evaluate(Infidelity(), {"patch_size": 7}, tab, x, 2, attribution, kind="tabular")
    assert err.value.message.startswith("infidelity.patch_size: expected an integer in [1, 6], got 7")
