"""Sparseness, complexity and completeness against values worked out by hand: the first two on tiny
maps (no model evaluation), completeness on linear ONNX graphs whose scores numpy computes exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explaind.evaluation.completeness import Completeness
from explaind.evaluation.complexity import Complexity
from explaind.evaluation.sparseness import Sparseness

from _linear import linear_score, served_linear
from inprocess import evaluate

TAB, _ = served_linear("tab", (4,), 3)
TABULAR = {"kind": "tabular", "background": np.zeros((2, 4), np.float32)}
IMG, _ = served_linear("img", (3, 2, 3), 3)


def tabular(metric, attribution, given=None):
    outcome, params = evaluate(metric, given or {}, TAB, np.ones(4, np.float32), 0, np.asarray(attribution, float),
                               **TABULAR)
    return outcome.value.value, params, outcome


def test_sparseness_is_the_gini_index_of_the_magnitudes():
    v, params, outcome = tabular(Sparseness(), [0, 0, 0, 1])
    assert params == {"abs": True} and outcome.stats.model_evaluations == 0
    assert v == pytest.approx(3 / 4, rel=1e-6)           # one value holds everything: (P - 1) / P
    assert tabular(Sparseness(), [2, 2, 2, 2])[0] == pytest.approx(0.0, abs=1e-12)
    # [1, 2, 3, 4]: (-3 * 1 - 1 * 2 + 1 * 3 + 3 * 4) / (4 * 10)
    assert tabular(Sparseness(), [4, 1, 3, 2])[0] == pytest.approx(0.25, rel=1e-6)
    # abs: [-4, 1, 0, 0] -> sorted [0, 0, 1, 4]: (1 + 12) / (4 * 5)
    assert tabular(Sparseness(), [-4, 1, 0, 0])[0] == pytest.approx(13 / 20, rel=1e-6)
    # signed: [-1, 0, 0, 0.25] (scaled by the max |a|) -> (-3 * -1 + 3 * 0.25) / (4 * -0.75)
    assert tabular(Sparseness(), [-4, 0, 0, 1], {"abs": False})[0] == pytest.approx(-1.25, rel=1e-5)
    assert tabular(Sparseness(), [0, 0, 0, 0])[0] == 0.0  # the epsilon: a zero map is uniform
    # images: per pixel, one of six
    outcome, _ = evaluate(Sparseness(), {}, IMG, np.zeros((3, 2, 3), np.float32), 0, np.eye(2, 3) * [[5], [0]])
    assert outcome.value.value == pytest.approx(5 / 6, rel=1e-6)


def test_sparseness_does_not_depend_on_the_scale():
    a = np.array([1e-6, 3e-6, 0, 2e-6])
    assert tabular(Sparseness(), a)[0] == pytest.approx(tabular(Sparseness(), a * 1e6)[0], rel=1e-12)


def test_complexity_is_the_entropy_of_the_fractional_contributions():
    v, params, outcome = tabular(Complexity(), [1, 1, 1, 1])
    assert params == {"abs": True} and outcome.stats.model_evaluations == 0
    assert v == pytest.approx(math.log(4))
    assert tabular(Complexity(), [0, -7, 0, 0])[0] == pytest.approx(0.0, abs=1e-9)
    # [1, -3, 0, 0] -> p = [1/4, 3/4]
    assert tabular(Complexity(), [1, -3, 0, 0])[0] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert tabular(Complexity(), [1, 3, 0, 0], {"abs": False})[0] == pytest.approx(
        -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert math.isnan(tabular(Complexity(), [1, -3, 0, 0], {"abs": False})[0])  # no distribution
    assert math.isnan(tabular(Complexity(), [0, 0, 0, 0])[0])
    assert not Complexity.higher_is_better and Sparseness.higher_is_better


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_completeness_compares_the_sum_with_the_score_change(score):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 2, 3)).astype(np.float32)
    served, weights = served_linear("lin", (3, 2, 3), 3)
    attribution = rng.normal(size=(2, 3))
    outcome, params = evaluate(Completeness(), {"baseline": 0.5}, served, x, 1, attribution, score=score)
    assert params == {"baseline": 0.5, "abs": False, "normalise": False}
    f_input = linear_score(weights, x, 1, score)
    f_baseline = linear_score(weights, np.full_like(x, 0.5), 1, score)
    figures = outcome.value.figures
    assert figures["f_input"] == pytest.approx(f_input, rel=1e-5)
    assert figures["f_baseline"] == pytest.approx(f_baseline, rel=1e-5)
    assert figures["attribution_sum"] == pytest.approx(attribution.sum())
    gap = attribution.sum() - (f_input - f_baseline)
    assert figures["gap"] == pytest.approx(gap, rel=1e-5)
    assert outcome.value.value == pytest.approx(abs(gap), rel=1e-5)
    assert outcome.stats.model_evaluations == 1
    assert Completeness().planned_rows(params, None, 0) == 1


def test_integrated_gradients_of_a_linear_logit_is_complete():
    """On a linear logit, (x - x') * w per value, summed over channels, adds up exactly."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 2, 3)).astype(np.float32)
    served, weights = served_linear("lin", (3, 2, 3), 3)
    ig = ((x.astype(np.float64) + 1.0) * weights[:, 2].reshape(3, 2, 3)).sum(axis=0)
    outcome, _ = evaluate(Completeness(), {"baseline": -1.0}, served, x, 2, ig, score="logit")
    assert outcome.value.value == pytest.approx(0.0, abs=1e-5)
    # normalised (Quantus's default) the same map is no longer complete; abs sums magnitudes
    normalised, _ = evaluate(Completeness(), {"baseline": -1.0, "normalise": True}, served, x, 2, ig, score="logit")
    assert normalised.value.figures["attribution_sum"] == pytest.approx(ig.sum() / np.abs(ig).max())
    absolute, _ = evaluate(Completeness(), {"baseline": -1.0, "abs": True}, served, x, 2, ig, score="logit")
    assert absolute.value.figures["attribution_sum"] == pytest.approx(np.abs(ig).sum())


def test_completeness_on_tabular_features():
    served, weights = served_linear("tab", (4,), 3)
    x = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    contribution = x.astype(np.float64) * weights[:, 0]
    outcome, _ = evaluate(Completeness(), {}, served, x, 0, contribution, score="logit", **TABULAR)
    assert outcome.value.value == pytest.approx(0.0, abs=1e-5)
    assert outcome.value.figures["f_baseline"] == pytest.approx(0.0, abs=1e-7)
