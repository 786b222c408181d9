"""Sensitivity-n through the real engine on linear ONNX models: the seeded subsets replayed, the
correlation per subset size computed in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from explaind.evaluation.run import metric_rng
from explaind.evaluation.sensitivity_n import SensitivityN

from _linear import linear_score, served_linear
from inprocess import evaluate


def test_correlation_per_subset_size_and_their_mean():
    rng = np.random.default_rng(31)
    x = rng.normal(size=(2, 5, 5)).astype(np.float32)
    attribution = rng.normal(size=(5, 5))
    served, weights = served_linear("lin", (2, 5, 5), 3, max_batch_rows=32)
    outcome, params = evaluate(SensitivityN(), {"steps": 4, "nr_samples": 12}, served, x, 0, attribution,
                              score="logit")
    assert params == {"steps": 4, "nr_samples": 12, "n_max_percentage": pytest.approx(0.8), "baseline": "black"}
    sizes = [5, 10, 15, 20]  # round(k / 4 * 0.8 * 25)
    np.testing.assert_array_equal(outcome.value.curves["subset_sizes"], sizes)
    draws = metric_rng(1, 0, "sensitivity_n")
    flat = x.astype(np.float64).reshape(2, -1)
    expected = []
    for n in sizes:
        sums, drops = [], []
        for _ in range(12):
            subset = draws.choice(25, n, replace=False)
            perturbed = flat.copy()
            perturbed[:, subset] = flat.min()
            sums.append(attribution.reshape(-1)[subset].sum())
            drops.append(linear_score(weights, x, 0, "logit")
                         - linear_score(weights, perturbed.reshape(x.shape), 0, "logit"))
        expected.append(np.corrcoef(sums, drops)[0, 1])
    np.testing.assert_allclose(outcome.value.curves["correlations"], expected, atol=1e-5)
    assert outcome.value.value == pytest.approx(np.mean(expected), abs=1e-5)
    assert outcome.stats.model_evaluations == 48


def test_a_linear_logit_and_its_exact_map_hold_for_every_n():
    rng = np.random.default_rng(32)
    x = rng.normal(size=(10,)).astype(np.float32)
    tab, weights = served_linear("tab", (10,), 2)
    exact = weights[:, 0].astype(np.float64) * x
    outcome, _ = evaluate(SensitivityN(), {"steps": 3, "nr_samples": 10, "baseline": "zero"}, tab, x, 0, exact,
                          kind="tabular", score="logit")
    np.testing.assert_allclose(outcome.value.curves["correlations"], 1.0, atol=1e-6)
