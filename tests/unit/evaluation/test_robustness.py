"""The robustness metrics (max- and avg-sensitivity, local Lipschitz estimate, random logit,
adversarial stability) through the real engine on linear ONNX models, against values computed by
hand: a linear model's logit gradient is its weight column, so saliency maps do not move at all and
input x gradient maps move exactly with the input (a_i - a = u_i * w). Also MetricContext.reexplain_all."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from scipy import stats
from skimage.metrics import structural_similarity

from explaind.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from explaind.evaluation.adversarial_stability import AdversarialStability
from explaind.evaluation.avg_sensitivity import AvgSensitivity
from explaind.evaluation.base import REEXPLAIN_CONCURRENCY, MetricContext
from explaind.evaluation.local_lipschitz import LocalLipschitz
from explaind.evaluation.max_sensitivity import MaxSensitivity
from explaind.evaluation.random_logit import RandomLogit, ssim
from explaind.evaluation.run import MetricQuery, metric_rng, prepare_metrics
from explaind.methods.base import RunStats
from explaind.methods.input_x_gradient import InputXGradient
from explaind.methods.saliency import Saliency
from explaind.models.white_box import WhiteBox

from _linear import served_linear, settings, softmax
from inprocess import evaluate, view_of

FEATURES, CLASSES, TARGET, SEED = 12, 4, 2, 7


def tabular(seed: int = 0):
    served, weights = served_linear("tab", (FEATURES,), CLASSES, layout="tabular", max_batch_rows=8, seed=seed)
    x = np.random.default_rng(11).normal(size=FEATURES).astype(np.float32)
    return served, weights.astype(np.float64), x


def noise_as_drawn(metric: str, n: int, shape, kind: str, scale: float) -> list[np.ndarray]:
    """The copies a metric draws first from its generator (seeded as the first metric of a request)."""
    rng = metric_rng(SEED, 0, metric)
    x_noise = []
    for _ in range(n):
        x_noise.append(rng.uniform(-scale, scale, size=shape) if kind == "uniform" else rng.normal(0.0, scale, size=shape))
    return x_noise


@pytest.mark.parametrize("metric", [MaxSensitivity(), AvgSensitivity(), LocalLipschitz()])
def test_a_constant_gradient_map_has_zero_sensitivity(metric):
    """Saliency of a linear image model's logit is |W[:, t]| (max over channels) whatever the input."""
    served, weights = served_linear("lin", (3, 5, 6), CLASSES, max_batch_rows=8)
    x = np.random.default_rng(1).normal(size=(3, 5, 6)).astype(np.float32)
    attribution = np.abs(weights[:, TARGET]).reshape(3, 5, 6).max(axis=0)
    outcome, params = evaluate(metric, {"nr_samples": 5}, served, x, TARGET, attribution, score="logit",
                               seed=SEED, method=Saliency())
    curve = next(iter(outcome.value.curves.values()))
    assert outcome.value.value == 0.0 and len(curve) == 5 and np.all(curve == 0.0)
    # 5 re-explanations of 2 rows each (the copy's prediction, its gradient); saliency plans none of
    # its own rows in advance, so the plan counts the predictions.
    assert outcome.stats.model_evaluations == 10
    assert metric.planned_rows(params, view_of(served), 0) == 5 and metric.planned_rows(params, view_of(served), 3) == 20


@pytest.mark.parametrize("metric,aggregate", [(MaxSensitivity(), np.max), (AvgSensitivity(), np.mean)])
def test_input_x_gradient_sensitivity_is_the_relative_noise_on_the_map(metric, aggregate):
    """a(x) = x * w_t, so ||a - a_i|| / ||a|| = ||u_i * w_t|| / ||x * w_t|| for the drawn noise u_i."""
    served, w, x = tabular()
    attribution = x.astype(np.float64) * w[:, TARGET]
    outcome, params = evaluate(metric, {"nr_samples": 20, "lower_bound": 0.3}, served, x, TARGET, attribution,
                               score="logit", seed=SEED, method=InputXGradient(), kind="tabular")
    assert params == {"nr_samples": 20, "lower_bound": 0.3, "normalise": False}
    copies = [(x.astype(np.float64) + u).astype(np.float32) for u in noise_as_drawn(metric.name, 20, x.shape, "uniform", 0.3)]
    expected = np.array([np.linalg.norm(attribution - c.astype(np.float64) * w[:, TARGET]) / np.linalg.norm(attribution)
                         for c in copies])
    np.testing.assert_allclose(outcome.value.curves["sensitivities"], expected, rtol=1e-5)
    assert outcome.value.value == pytest.approx(aggregate(expected), rel=1e-5)
    assert 0.05 < outcome.value.value < 1.0  # the noise moved the maps: not a vacuous comparison
    assert outcome.stats.model_evaluations == 40


def test_sensitivity_normalised_maps_and_an_all_zero_map():
    served, w, x = tabular()
    attribution = 3.0 * x.astype(np.float64) * w[:, TARGET]  # normalised away: the same as x * w_t
    outcome, _ = evaluate(MaxSensitivity(), {"nr_samples": 4, "normalise": True}, served, x, TARGET, attribution,
                          score="logit", seed=SEED, method=InputXGradient(), kind="tabular")
    a = attribution / np.abs(attribution).max()
    copies = [(x.astype(np.float64) + u).astype(np.float32) for u in noise_as_drawn("max_sensitivity", 4, x.shape, "uniform", 0.2)]
    maps = [c.astype(np.float64) * w[:, TARGET] for c in copies]
    expected = [np.linalg.norm(a - m / np.abs(m).max()) / np.linalg.norm(a) for m in maps]
    np.testing.assert_allclose(outcome.value.curves["sensitivities"], expected, rtol=1e-5)
    zero, _ = evaluate(MaxSensitivity(), {"nr_samples": 2}, served, x, TARGET, np.zeros(FEATURES), score="logit",
                       seed=SEED, method=InputXGradient(), kind="tabular")
    assert zero.value.value == float("inf")  # an all-zero judged map whose re-explanations are not zero


def test_local_lipschitz_is_the_largest_map_change_per_input_change():
    served, w, x = tabular()
    attribution = x.astype(np.float64) * w[:, TARGET]
    outcome, params = evaluate(LocalLipschitz(), {"nr_samples": 15}, served, x, TARGET, attribution, score="logit",
                               seed=SEED, method=InputXGradient(), kind="tabular")
    assert params == {"nr_samples": 15, "perturb_std": 0.1, "normalise": True}
    a = attribution / np.abs(attribution).max()
    expected = []
    for e in noise_as_drawn("local_lipschitz", 15, x.shape, "gaussian", 0.1):
        c = (x.astype(np.float64) + e).astype(np.float32).astype(np.float64)
        m = c * w[:, TARGET]
        expected.append(np.linalg.norm(a - m / np.abs(m).max()) / (np.linalg.norm(c - x) + 1e-10))
    np.testing.assert_allclose(outcome.value.curves["lipschitz"], expected, rtol=1e-4)
    assert outcome.value.value == pytest.approx(max(expected), rel=1e-4) and outcome.value.value > 0.1
    # Unnormalised, a linear map's Lipschitz ratio is ||u * w|| / ||u|| <= max |w_t|.
    raw, _ = evaluate(LocalLipschitz(), {"nr_samples": 15, "normalise": False}, served, x, TARGET, attribution,
                      score="logit", seed=SEED, method=InputXGradient(), kind="tabular")
    assert 0 < raw.value.value <= np.abs(w[:, TARGET]).max() * (1 + 1e-5)


def test_random_logit_compares_with_the_map_of_a_drawn_other_class():
    served, w, x = tabular()
    attribution = x.astype(np.float64) * w[:, TARGET]
    outcome, params = evaluate(RandomLogit(), {}, served, x, TARGET, attribution, score="logit", seed=SEED,
                               method=InputXGradient(), kind="tabular")
    assert params == {"normalise": True}
    drawn = int(metric_rng(SEED, 0, "random_logit").integers(CLASSES - 1))
    other = drawn + (drawn >= TARGET)
    assert outcome.value.figures["other_class"] == other != TARGET
    a = attribution / np.abs(attribution).max()
    b = x.astype(np.float64) * w[:, other]
    b = b / np.abs(b).max()
    both = np.concatenate([a, b])
    expected = structural_similarity(a, b, data_range=both.max() - both.min())
    assert outcome.value.value == pytest.approx(expected, abs=1e-6)
    assert outcome.stats.model_evaluations == 2


def test_ssim_is_scikit_images_on_flattened_maps():
    rng = np.random.default_rng(3)
    for shape in [(9,), (8, 8), (5, 13)]:
        a, b = rng.normal(size=shape), rng.normal(size=shape)
        fa, fb = a.reshape(-1), b.reshape(-1)
        both = np.concatenate([fa, fb])
        assert ssim(a, b) == pytest.approx(structural_similarity(fa, fb, data_range=both.max() - both.min()), abs=1e-12)
    assert ssim(np.ones(10), np.ones(10)) == 1.0
    a = rng.normal(size=5)  # fewer than 7 entries: a window of 5
    assert ssim(a, a) == pytest.approx(1.0)


def pgd_by_hand(w, x, target, epsilon, steps, alpha):
    """PGD on the target probability of the linear model, a step that changes the argmax refused
    (alpha halved); returns the kept point and the number refused."""
    def probabilities(v):
        return softmax(v.astype(np.float64) @ w)

    def gradient(v):
        p = probabilities(v)
        return p[target] * (w[:, target] - w @ p)

    predicted = int(np.argmax(probabilities(x)))
    kept, g, refused = x.astype(np.float32), gradient(x), 0
    for _ in range(steps):
        candidate = np.clip(kept.astype(np.float64) - alpha * np.sign(g), x - epsilon, x + epsilon).astype(np.float32)
        if int(np.argmax(probabilities(candidate))) == predicted:
            kept, g = candidate, gradient(candidate)
        else:
            refused, alpha = refused + 1, alpha / 2
    return kept, refused


@pytest.mark.parametrize("epsilon,steps", [(0.05, 1), (0.1, 4), (0.3, 1)])
def test_adversarial_stability_follows_pgd_and_ranks_the_maps(epsilon, steps):
    """Saliency of the target probability, |p_t (w_t - W p)|, moves with p: PGD by hand on the same
    model (FGSM; steps refused near the boundary; a single step refused, leaving the input as it is)."""
    served, w, x = tabular()
    predicted = int(np.argmax(x.astype(np.float64) @ w))

    def saliency(v):
        p = softmax(v.astype(np.float64) @ w)
        return np.abs(p[predicted] * (w[:, predicted] - w @ p))

    attribution = saliency(x)
    outcome, params = evaluate(AdversarialStability(), {"epsilon": epsilon, "steps": steps, "top_k": 6}, served, x,
                               predicted, attribution, seed=SEED, method=Saliency(), kind="tabular")
    assert params["step_size"] == pytest.approx(2.5 * epsilon / steps)
    kept, refused = pgd_by_hand(w, x, predicted, epsilon, steps, params["step_size"])
    moved = saliency(kept)
    figures = outcome.value.figures
    assert figures["refused"] == refused
    assert figures["linf"] == pytest.approx(np.abs(kept - x).max(), rel=1e-6) and figures["linf"] <= epsilon * (1 + 1e-6)
    rho = stats.spearmanr(attribution, moved)[0]
    assert outcome.value.value == pytest.approx(rho, abs=1e-9) and figures["rank_correlation"] == outcome.value.value
    top = len(set(np.argsort(-attribution)[:6]) & set(np.argsort(-moved)[:6])) / 6
    assert figures["top_k_intersection"] == top
    p = softmax(x.astype(np.float64) @ w)[predicted]
    assert figures["score_drop"] == pytest.approx(p - softmax(kept.astype(np.float64) @ w)[predicted], abs=1e-5)
    # 2 rows a step (a gradient, a prediction), then the re-explanation (its prediction and gradient).
    assert outcome.stats.model_evaluations == 2 * steps + 2
    if refused == steps:  # every step crossed the boundary: the input and its map are unchanged
        assert figures["linf"] == 0 and outcome.value.value == 1.0
    else:
        assert figures["linf"] > 0 and figures["score_drop"] > 0.1 and outcome.value.value < 1.0
    assert refused == {(0.05, 1): 0, (0.1, 4): 3, (0.3, 1): 1}[(epsilon, steps)]


def test_adversarial_stability_needs_gradients():
    served, _ = served_linear("lin", (3, 4, 4), CLASSES)
    without = view_of(served)
    query = [MetricQuery("adversarial_stability", {})]
    with pytest.raises(FailedPrecondition, match="adversarial_stability.*no gradients"):
        prepare_metrics(query, without, settings(), method_rows=0, has_method=True, region=None, field="metrics",
                        x=np.zeros(served.signature.example_shape, np.float32))
    with_gradients = view_of(served, white_box=WhiteBox(True, "", (), ""))
    prepared = prepare_metrics(query, with_gradients, settings(), method_rows=3, has_method=True, region=None,
                               field="metrics", x=np.zeros(served.signature.example_shape, np.float32))
    assert prepared[0].rows == 2 * 10 + 4
    assert prepared[0].params["top_k"] == 1 and prepared[0].params["epsilon"] == pytest.approx(8 / 255)


@pytest.mark.parametrize("name,given,field", [
    ("max_sensitivity", {"nr_samples": 0}, "max_sensitivity.nr_samples"),
    ("avg_sensitivity", {"lower_bound": 0.0}, "avg_sensitivity.lower_bound"),
    ("local_lipschitz", {"perturb_std": -1.0}, "local_lipschitz.perturb_std"),
    ("adversarial_stability", {"steps": 0}, "adversarial_stability.steps"),
    ("adversarial_stability", {"top_k": 17}, "adversarial_stability.top_k"),
])
def test_bad_parameters_name_the_field(name, given, field):
    served, _ = served_linear("lin", (1, 4, 4), CLASSES)
    view = view_of(served, white_box=WhiteBox(True, "", (), ""))
    with pytest.raises(InvalidArgument, match=field.replace(".", r"\.")):
        prepare_metrics([MetricQuery(name, given)], view, settings(), method_rows=0, has_method=True, region=None,
                        field="metrics",
                        x=np.zeros(served.signature.example_shape, np.float32))


def test_reexplaining_metrics_need_a_method():
    served, _ = served_linear("lin", (1, 4, 4), CLASSES)
    with pytest.raises(InvalidArgument, match="explain.method"):
        prepare_metrics([MetricQuery("max_sensitivity", {})], view_of(served), settings(), method_rows=0,
                        has_method=False, region=None, field="metrics",
                        x=np.zeros(served.signature.example_shape, np.float32))


def test_reexplain_all_runs_concurrently_in_order_with_its_own_generators():
    """Results come back in input order whatever order the runs finish in, at most
    REEXPLAIN_CONCURRENCY at a time, each run with a generator spawned in order from the metric's."""
    running, peak, seen = [0], [0], {}

    async def fake(x, target, rng):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.002 * (int(x[0]) * 7 % 5))  # finishing out of order
        seen[int(x[0])] = (target, float(rng.random()))
        running[0] -= 1
        return np.full(3, x[0] * 10.0), RunStats(model_evaluations=2, batches=1)

    xs = [np.array([float(i)]) for i in range(40)]
    ctx = MetricContext(explain=None, attribution=np.zeros(3), rng=np.random.default_rng(5), reexplain_with=fake)

    async def main():
        step = ctx.reexplain_all(xs, targets=[i % 3 for i in range(40)])
        return await step.make()

    maps = asyncio.run(main())
    assert [m[0] for m in maps] == [i * 10.0 for i in range(40)]
    assert 1 < peak[0] <= REEXPLAIN_CONCURRENCY
    expected = [g.random() for g in np.random.default_rng(5).spawn(40)]
    assert [seen[i] for i in range(40)] == [(i % 3, expected[i]) for i in range(40)]
    assert ctx.spent.model_evaluations == 80 and ctx.spent.batches == 40


def test_the_same_seed_gives_the_same_figures():
    served, w, x = tabular()
    attribution = x.astype(np.float64) * w[:, TARGET]
    runs = [evaluate(AvgSensitivity(), {"nr_samples": 6}, served, x, TARGET, attribution, score="logit", seed=s,
                     method=InputXGradient(), kind="tabular")[0].value.value for s in (SEED, SEED, SEED + 1)]
    assert runs[0] == runs[1] != runs[2]


def test_reexplain_all_stops_the_rest_when_one_fails():
    started, finished = [], []

    async def fake(x, target, rng):
        started.append(int(x[0]))
        if int(x[0]) == 3:
            raise DeadlineExceeded("the request's deadline passed")
        await asyncio.sleep(0.05)
        finished.append(int(x[0]))
        return np.zeros(2), RunStats()

    ctx = MetricContext(explain=None, attribution=np.zeros(2), rng=np.random.default_rng(0), reexplain_with=fake)

    async def main():
        with pytest.raises(DeadlineExceeded):
            await ctx.reexplain_all([np.array([float(i)]) for i in range(40)], targets=[0] * 40).make()
        await asyncio.sleep(0.1)  # nothing left running to finish later

    asyncio.run(main())
    # The first REEXPLAIN_CONCURRENCY started, and the one let in by the failed run's slot; none finished.
    assert len(started) <= REEXPLAIN_CONCURRENCY + 1 and finished == []
