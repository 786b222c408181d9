"""Integrated Gradients through the real engine, on a linear model (exact and complete for every
quadrature), Captum's quadratures, and concurrent requests sharing gradient batches."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from explaind.engine.engine import Engine
from explaind.methods.integrated_gradients import IntegratedGradients, quadrature
from explaind.metrics import Metrics
from explaind.models.white_box import WhiteBox

from _linear import served_linear, settings
from inprocess import explain, run_method

SHAPE = (3, 6, 5)
X = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid"])
def test_integrated_gradients_of_a_linear_model_is_exact_and_complete(method):
    served, weights = served_linear("lin", SHAPE, 4)
    result, params = explain(IntegratedGradients(), {"n_steps": 7, "method": method, "baseline": 0.5}, served, X, 1,
                             "logit", white_box=WhiteBox(True))
    total_weight = quadrature(method, 7)[1].sum()  # 1, but 6/7 for Captum's trapezoid
    exact = (X - 0.5) * weights[:, 1].reshape(SHAPE)
    np.testing.assert_allclose(result.attribution, total_weight * exact, rtol=1e-4, atol=1e-6)
    expected_gap = (total_weight - 1) * exact.sum()
    assert result.figures["completeness_gap"] == pytest.approx(expected_gap, abs=1e-4)
    f = lambda z: float(z.reshape(-1).astype(np.float64) @ weights[:, 1])  # noqa: E731
    assert result.figures["f_input"] == pytest.approx(f(X), rel=1e-5)
    assert result.figures["f_baseline"] == pytest.approx(f(np.full(SHAPE, 0.5)), rel=1e-5, abs=1e-6)
    assert result.model_evaluations == 1 + 7 + 2  # the prediction, the nodes, f(input) and f(baseline)


def test_quadratures_follow_captum():
    alphas, steps = quadrature("gausslegendre", 3)
    np.testing.assert_allclose(alphas, [0.5 - 0.5 * np.sqrt(0.6), 0.5, 0.5 + 0.5 * np.sqrt(0.6)])
    np.testing.assert_allclose(steps, [5 / 18, 8 / 18, 5 / 18])
    alphas, steps = quadrature("riemann_trapezoid", 5)
    np.testing.assert_allclose(alphas, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(steps, [0.1, 0.2, 0.2, 0.2, 0.1])  # Captum's: 1/n, ends halved
    np.testing.assert_allclose(quadrature("riemann_middle", 4)[0], [0.125, 0.375, 0.625, 0.875])


def test_gradient_rows_of_concurrent_requests_share_batches_and_keep_their_answers():
    served, weights = served_linear("lin", SHAPE, 4)
    xs = [X, -X, 2 * X]

    async def main():
        metrics = Metrics()
        engine = Engine(settings(), metrics)
        method = IntegratedGradients()
        runs = await asyncio.gather(*(run_method(engine, served, method, {"n_steps": 20}, x, target, "logit", seed=0,
                                                 white_box=WhiteBox(True))
                                      for target, x in enumerate(xs)))
        results = [outcome for outcome, _ in runs]
        await engine.close()
        return results, metrics

    results, metrics = asyncio.run(main())
    for target, (x, result) in enumerate(zip(xs, results)):
        np.testing.assert_allclose(result.attribution, x * weights[:, target].reshape(SHAPE), rtol=1e-4, atol=1e-6)
    labels = {"model": "lin", "variant": "gradient"}
    batches = metrics.registry.get_sample_value("explaind_batch_rows_count", labels)
    assert metrics.registry.get_sample_value("explaind_rows_total", labels) == 3 * 22
    assert metrics.registry.get_sample_value("explaind_batch_jobs_sum", labels) > batches  # shared batches
