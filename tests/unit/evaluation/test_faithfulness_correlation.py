"""Faithfulness correlation through the real engine on linear ONNX models: the subsets are the
metric's seeded draws (replayed here from the same generator), the correlation computed in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from explaind.errors import InvalidArgument
from explaind.evaluation.faithfulness_correlation import FaithfulnessCorrelation
from explaind.evaluation.run import metric_rng

from _linear import linear_score, served_linear
from inprocess import evaluate


def correlation(weights, x, target, score, attribution, runs, size, rng, baseline_of):
    flat = x.astype(np.float64).reshape(x.shape[0] if x.ndim == 3 else 1, -1)
    fill = baseline_of(flat)
    sums, drops = [], []
    for _ in range(runs):
        subset = rng.choice(attribution.size, size, replace=False)
        perturbed = flat.copy()
        perturbed[:, subset] = fill
        sums.append(attribution.reshape(-1)[subset].sum())
        drops.append(linear_score(weights, x, target, score) - linear_score(weights, perturbed.reshape(x.shape), target,
                                                                             score))
    return np.corrcoef(sums, drops)[0, 1], np.array(sums), np.array(drops)


@pytest.mark.parametrize("seed", [1, 2])
def test_pearson_of_subset_sums_and_score_drops(seed):
    rng = np.random.default_rng(21)
    x = rng.normal(size=(3, 6, 6)).astype(np.float32)
    attribution = rng.normal(size=(6, 6))
    served, weights = served_linear("lin", (3, 6, 6), 4, max_batch_rows=16)
    outcome, params = evaluate(FaithfulnessCorrelation(), {"nr_runs": 30, "subset_size": 5}, served, x, 3,
                               attribution, seed=seed)
    assert params == {"nr_runs": 30, "subset_size": 5, "baseline": "black"}
    expected, sums, drops = correlation(weights, x, 3, "probability", attribution, 30, 5,
                                        metric_rng(seed, 0, "faithfulness_correlation"), lambda f: f.min())
    np.testing.assert_allclose(outcome.value.curves["attribution_sums"], sums, rtol=1e-12)
    np.testing.assert_allclose(outcome.value.curves["score_drops"], drops, rtol=1e-4, atol=1e-6)
    assert outcome.value.value == pytest.approx(expected, abs=1e-5)
    assert outcome.stats.model_evaluations == 30


def test_the_linear_models_exact_map_correlates_perfectly_on_logits():
    rng = np.random.default_rng(22)
    x = rng.normal(size=(8,)).astype(np.float32)
    tab, weights = served_linear("tab", (8,), 3)
    exact = weights[:, 1].astype(np.float64) * (x - 0.0)  # zero baseline: the drop is sum w_i x_i
    outcome, params = evaluate(FaithfulnessCorrelation(), {"baseline": "zero"}, tab, x, 1, exact, kind="tabular",
                               score="logit")
    assert params["subset_size"] == 4  # half of 8 features
    assert outcome.value.value == pytest.approx(1.0, abs=1e-6)


def test_subset_larger_than_the_input_is_refused():
    served, _ = served_linear("lin", (1, 4, 4), 2)
    with pytest.raises(InvalidArgument) as err:
        evaluate(FaithfulnessCorrelation(), {"subset_size": 17}, served, np.zeros((1, 4, 4), np.float32), 0,
                 np.zeros((4, 4)))
    assert err.value.message.startswith("faithfulness_correlation.subset_size: expected an integer in [1, 16], got 17")
