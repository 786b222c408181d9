"""Deletion and insertion through the real engine on linear ONNX models, against the definition
computed by hand in numpy (Petsiuk et al.'s CausalMetric loop); their parameter checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from explaind.errors import FailedPrecondition, InvalidArgument
from explaind.evaluation.curves import blur_kernel
from explaind.evaluation.deletion import Deletion
from explaind.evaluation.insertion import Insertion

from _linear import linear_score, served_linear
from inprocess import evaluate


def causal_curve(weights, x, target, score, attribution, step, start, end, lerf=False):
    """Petsiuk et al.'s loop: score, then replace the next `step` pixels (all channels) by `end`."""
    height, width = attribution.shape
    order = np.argsort(-attribution.reshape(-1) if not lerf else attribution.reshape(-1), kind="stable")
    current = start.copy()
    n = -(-height * width // step)
    scores = []
    for i in range(n + 1):
        scores.append(linear_score(weights, current, target, score))
        ys, xs = np.unravel_index(order[i * step:(i + 1) * step], (height, width))
        current[:, ys, xs] = end[:, ys, xs]
    scores = np.array(scores)
    return scores, (scores.sum() - scores[0] / 2 - scores[-1] / 2) / n


@pytest.mark.parametrize("score", ["probability", "logit"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_deletion_is_the_area_under_the_removal_curve(score, order):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 6, 7)).astype(np.float32)
    attribution = rng.normal(size=(6, 7))
    served, weights = served_linear("lin", (3, 6, 7), 4, max_batch_rows=5)
    outcome, params = evaluate(Deletion(), {"steps": 10, "order": order}, served, x, 2, attribution, score=score)
    assert params == {"steps": 10, "substrate": "zero", "order": order}
    scores, area = causal_curve(weights, x, 2, score, attribution, 5, x, np.zeros_like(x), lerf=order == "lerf")
    np.testing.assert_allclose(outcome.value.curves["scores"], scores, rtol=1e-5, atol=1e-6)
    assert outcome.value.value == pytest.approx(area, rel=1e-5)
    np.testing.assert_allclose(outcome.value.curves["fractions"], np.minimum(np.arange(10) * 5, 42) / 42)
    assert outcome.stats.model_evaluations == 10 and outcome.stats.batches == 2  # 10 rows, 5 a batch


def test_insertion_reveals_the_input_on_its_blurred_copy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    attribution = rng.normal(size=(12, 12))
    served, weights = served_linear("lin", (3, 12, 12), 3, max_batch_rows=64)
    outcome, params = evaluate(Insertion(), {"steps": 16}, served, x, 1, attribution)
    assert params == {"steps": 16, "substrate": "blur", "order": "morf"}
    blurred = np.stack([ndimage.convolve(c.astype(np.float64), blur_kernel(), mode="constant") for c in x])
    scores, area = causal_curve(weights, blurred, 1, "probability", attribution, 9, blurred, x.astype(np.float64))
    np.testing.assert_allclose(outcome.value.curves["scores"], scores, rtol=1e-5, atol=1e-6)
    assert outcome.value.value == pytest.approx(area, rel=1e-5)
    # The kernel is Petsiuk et al.'s gkern(11, 5): a normalised Gaussian on 11 x 11.
    kernel = blur_kernel()
    assert kernel.shape == (11, 11) and kernel.sum() == pytest.approx(1.0) and kernel[5, 5] == kernel.max()


def test_mean_substrate_and_tabular_features():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8,)).astype(np.float32)
    background = rng.normal(size=(20, 8)).astype(np.float32)
    attribution = rng.normal(size=(8,))
    served, weights = served_linear("tab", (8,), 3, max_batch_rows=4)
    outcome, _ = evaluate(Deletion(), {"substrate": "mean"}, served, x, 0, attribution, kind="tabular",
                          background=background)
    order = np.argsort(-attribution, kind="stable")
    current, scores = x.astype(np.float64), []
    for i in range(9):  # 100 steps over 8 features: one feature a step
        scores.append(linear_score(weights, current, 0, "probability"))
        if i < 8:
            current[order[i]] = background.mean(axis=0)[order[i]]
    np.testing.assert_allclose(outcome.value.curves["scores"], scores, rtol=1e-5, atol=1e-6)


def test_a_faithful_map_deletes_faster_than_its_reverse():
    """On a linear model the attribution w * x (the exact contribution) ranks best for deletion."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1, 8, 8)).astype(np.float32)
    served, weights = served_linear("lin", (1, 8, 8), 2, max_batch_rows=64)
    contribution = (weights[:, 0] - weights[:, 1]).reshape(8, 8) * x[0]
    good, _ = evaluate(Deletion(), {"steps": 64}, served, x, 0, contribution, score="logit")
    bad, _ = evaluate(Deletion(), {"steps": 64, "order": "lerf"}, served, x, 0, contribution, score="logit")
    assert good.value.value < bad.value.value


def test_parameter_checks_name_the_field():
    served, _ = served_linear("lin", (3, 6, 7), 4)
    x, a = np.zeros((3, 6, 7), np.float32), np.zeros((6, 7))
    with pytest.raises(InvalidArgument) as err:
        evaluate(Deletion(), {"steps": 0}, served, x, 0, a)
    assert err.value.message.startswith("deletion.steps: expected an integer in [1, 42], got 0")
    with pytest.raises(InvalidArgument) as err:
        evaluate(Insertion(), {"substrate": "noise"}, served, x, 0, a)
    assert err.value.message == "insertion.substrate: expected one of zero, blur, mean, got 'noise'"
    tab, _ = served_linear("tab", (5,), 2)
    tabular = {"kind": "tabular", "background": np.zeros((3, 5), np.float32)}
    outcome, params = evaluate(Insertion(), {}, tab, np.zeros(5, np.float32), 0, np.zeros(5), **tabular)
    assert params["substrate"] == "mean" and len(outcome.value.curves["scores"]) == 6
    with pytest.raises(FailedPrecondition) as err:
        evaluate(Insertion(), {"substrate": "blur"}, tab, np.zeros(5, np.float32), 0, np.zeros(5), **tabular)
    assert err.value.message.startswith("insertion.substrate: blur applies to images")
