"""Adversarial stability (after Ghorbani, Abid & Zou, AAAI 2019, Interpretation of Neural Networks
is Fragile): how far the explanation moves under a small adversarial perturbation of the input that
keeps the model's prediction.

Ghorbani et al. search, within an L-infinity ball of radius epsilon, for the input that changes the
explanation most while the predicted class stays. explaind uses the attack every model with
gradients affords: projected gradient descent on the target's probability (Madry et al. 2018; one
step is Goodfellow et al.'s FGSM), with the model's own input gradients (the engine's gradient
variant, as the gradient methods use):

    x_{t+1} = clip(x_t - alpha * sign(grad_x p_target(x_t)), x - epsilon, x + epsilon),  t < T

(the sign of the probability's gradient is the sign of the cross-entropy's, so this is FGSM / PGD on
the classification loss). A step whose point changes the predicted class is refused: the iterate
stays at the last point that kept it and alpha is halved for the steps after (figure `refused`
counts them; with every step refused the input is unchanged and the value is 1 for a deterministic
method). The request's method then re-explains the last kept point x*, and the two maps a (judged)
and a* are compared:

    rank_correlation = Spearman's rho(a, a*)           (the value; higher is better)
    top_k_intersection = |top_k(a) and top_k(a*)| / k   (the k largest entries of each map)

Defaults: epsilon 8/255 (Ghorbani et al.'s 8 on 0-255 pixels; here in model input space, with no
clipping to a pixel range), steps 10, step_size 2.5 * epsilon / steps (Madry et al.'s choice),
top_k 2% of the pixels or features (Ghorbani et al.'s 1000 of 224 x 224), at least 1. Figures:
`top_k_intersection`, `rank_correlation`, `linf` (max |x* - x|), `score_drop` (p_target(x) -
p_target(x*)), `refused`. Ties in ranking keep position order; two equal
maps correlate 1, a constant map and another 0 (rho is undefined there). Quantus has no such metric.

Cost, fixed in advance: T gradient rows and T prediction rows (step t > 0 scores the point reached
by step t - 1 and takes its gradient together; a last row checks the final point), then one
re-explanation. Needs the model's input gradients (FailedPrecondition otherwise).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..methods.base import INPUT_GRADIENTS, PROBABILITY, ModelView, prediction_stage
from ..methods.gradient_base import gradient_stage
from ..methods.params import ANY_KIND, Float, Int
from ..onnxgraph.variants import PROBABILITIES_OUTPUT
from .base import ROBUSTNESS, Metric, MetricContext, MetricSteps, MetricValue, positions
from .reexplained import explanation_rows, flat


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two maps (flattened; average ranks for ties)."""
    a, b = flat(a), flat(b)
    if np.array_equal(a, b):
        return 1.0
    if np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    from scipy import stats  # lazy: scipy is not imported by the server until a request needs it
    return float(stats.spearmanr(a, b)[0])


def top_k_intersection(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The share of the k largest entries of `a` that are among the k largest of `b`."""
    top_a = np.argsort(-flat(a), kind="stable")[:k]
    top_b = np.argsort(-flat(b), kind="stable")[:k]
    return float(len(np.intersect1d(top_a, top_b))) / k


class AdversarialStability(Metric):
    name = "adversarial_stability"
    title = "Adversarial stability"
    reference = "Ghorbani, Abid & Zou 2019, Interpretation of Neural Networks is Fragile"
    description = ("Rank correlation between the explanation and that of a PGD-perturbed input keeping the "
                   "prediction (higher is better).")
    category = ROBUSTNESS
    kinds = ANY_KIND
    reexplains = True
    higher_is_better = True
    figures = ("top_k_intersection", "rank_correlation", "linf", "score_drop", "refused")
    params = (
        Float("epsilon", 8 / 255, "L-infinity radius of the perturbation (model input space)", 0.0,
              exclusive_low=True, shown="8/255"),
        Int("steps", 10, "gradient steps (1: FGSM)", 1, 1000),
        Float("step_size", None, "first step size alpha", 0.0, exclusive_low=True,
              shown="2.5 * epsilon / steps"),
        Int("top_k", lambda lim: max(1, positions(lim.model) // 50), "entries compared by top_k_intersection", 1,
            lambda lim: positions(lim.model), shown="2% of the pixels or features, at least 1"),
    )

    def unavailable(self, model: ModelView) -> str:
        white_box = model.white_box
        if white_box is None:
            return "the model has no gradients (the perturbation follows the input gradient)"
        if not white_box.offers(INPUT_GRADIENTS, ("plain",)):
            return white_box.why_not()
        return ""

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Any) -> dict[str, Any]:
        if params.get("step_size") is None:
            params["step_size"] = 2.5 * params["epsilon"] / params["steps"]
        return params

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return 2 * params["steps"] + explanation_rows(method_rows)

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        epsilon, alpha = params["epsilon"], params["step_size"]
        x = np.asarray(ctx.x, np.float32)
        low, high = x.astype(np.float64) - epsilon, x.astype(np.float64) + epsilon
        predicted = int(np.argmax(ctx.explain.prediction.probabilities))
        scored = dataclasses.replace(ctx.explain, score=PROBABILITY)

        def at(point: np.ndarray) -> Any:
            return dataclasses.replace(scored, x=point)

        def step(point: np.ndarray, gradient: np.ndarray, size: float) -> np.ndarray:
            moved = point.astype(np.float64) - size * np.sign(gradient)
            return np.clip(moved, low, high).astype(np.float32)

        first = yield gradient_stage(at(x))
        kept, kept_gradient = x, first.total
        start_score = kept_score = float(ctx.explain.prediction.probabilities[ctx.target])
        candidate = step(kept, kept_gradient, alpha)
        refused = 0
        for t in range(1, params["steps"] + 1):
            if t < params["steps"]:
                grads, predicted_at = yield [gradient_stage(at(candidate)), prediction_stage(candidate)]
            else:
                grads, predicted_at = None, (yield prediction_stage(candidate))
            probabilities = predicted_at.outputs[PROBABILITIES_OUTPUT]
            if int(np.argmax(probabilities)) == predicted:
                kept, kept_score = candidate, float(probabilities[ctx.target])
                if grads is not None:
                    kept_gradient = grads.total
            else:
                refused += 1
                alpha /= 2
            if grads is not None:
                candidate = step(kept, kept_gradient, alpha)
        moved = yield ctx.reexplain(kept)
        rho = rank_correlation(ctx.attribution, moved)
        figures = {"top_k_intersection": top_k_intersection(ctx.attribution, moved, params["top_k"]),
                   "rank_correlation": rho, "linf": float(np.max(np.abs(kept.astype(np.float64) - x))),
                   "score_drop": float(start_score - kept_score), "refused": float(refused)}
        return MetricValue(rho, figures=figures)
