"""The robustness metrics through the real server: max_sensitivity re-explains nr_samples noisy
copies with the request's method (each costs what the method's own explanation costs), and the
same seed gives the same figures whatever the batching; adversarial_stability refused for a model
without gradients is covered in tests/unit/evaluation/test_robustness.py."""

from __future__ import annotations

import numpy as np
import pytest

from explaind_client import Progress

from _server import DEMO

EXAMPLE = DEMO / "examples" / "circle_0.png"


@pytest.fixture(scope="module")
def image() -> bytes:
    return EXAMPLE.read_bytes()


def test_max_sensitivity_re_explains_every_copy_and_is_seeded(client, image):
    samples = 6
    runs = [client.evaluate("shapes", method="saliency", image=image, seed=seed,
                            metrics=[("max_sensitivity", {"nr_samples": samples})])
            for seed in (21, 21, 22)]
    first, again, other = runs
    one_explanation = int(first.explanation.stats["model_evaluations"])  # its prediction and its gradient
    assert one_explanation == 2
    result = first["max_sensitivity"]
    assert int(result.stats["model_evaluations"]) == samples * one_explanation
    assert result.stats["parameters"]["nr_samples"] == samples
    values = result.curves["sensitivities"]
    assert values.shape == (samples,) and np.all(values > 0) and result.value == pytest.approx(values.max())
    # The same request again: the same noise, the same maps, the same figures.
    np.testing.assert_array_equal(again["max_sensitivity"].curves["sensitivities"], values)
    assert again["max_sensitivity"].value == result.value
    # Another seed: other noise.
    assert not np.array_equal(other["max_sensitivity"].curves["sensitivities"], values)


def test_robustness_metrics_are_listed(client):
    infos = {m.name: m for m in client.list_metrics("shapes")}
    for name in ("max_sensitivity", "avg_sensitivity", "local_lipschitz", "adversarial_stability", "random_logit"):
        assert infos[name].reexplains, name
    assert infos["max_sensitivity"].better == "lower" and infos["adversarial_stability"].better == "higher"


def test_every_robustness_metric_runs_through_the_server(client, image):
    result = client.evaluate("shapes", method="saliency", image=image, seed=3,
                             metrics=[("avg_sensitivity", {"nr_samples": 3}), ("local_lipschitz", {"nr_samples": 3}),
                                      ("adversarial_stability", {"steps": 3}), "random_logit"])
    assert [r.metric for r in result.results] == ["avg_sensitivity", "local_lipschitz", "adversarial_stability",
                                                  "random_logit"]
    assert result["avg_sensitivity"].value > 0 and result["local_lipschitz"].value > 0
    adversarial = result["adversarial_stability"]
    assert -1 <= adversarial.value <= 1 and 0 <= adversarial.figures["top_k_intersection"] <= 1
    assert adversarial.figures["linf"] <= 8 / 255 * (1 + 1e-5)
    assert int(adversarial.stats["model_evaluations"]) == 2 * 3 + 2  # the steps, then one re-explanation
    logit = result["random_logit"]
    assert -1 <= logit.value <= 1 and logit.figures["other_class"] != result.explanation.target_class
    assert int(logit.stats["model_evaluations"]) == 2


def test_evaluate_stream_counts_the_re_explanations_in_its_progress(client, image):
    updates = list(client.evaluate_stream("shapes", method="saliency", image=image, seed=4,
                                          metrics=[("max_sensitivity", {"nr_samples": 8}), ("deletion", {"steps": 10})]))
    evaluating = [u for u in updates if isinstance(u, Progress) and u.stage == "evaluating"]
    assert evaluating, "no progress while evaluating"
    done = [p.rows_done for p in evaluating]
    assert done == sorted(done) and done[-1] == evaluating[-1].rows_total == 8 * 2 + 11
