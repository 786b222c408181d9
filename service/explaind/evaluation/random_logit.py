"""Random logit (Sixt, Granz & Landgraf, ICML 2020, When Explanations Lie: Why Many Modified BP
Attributions Fail, section 5; Quantus RandomLogit): is the explanation specific to the class it
explains? A map that looks the same for another class explains the input, not the decision.

Draw one other class c' uniformly among the K - 1 classes that are not the target (from the
metric's generator), re-explain the same input for c' with the request's method, and compare the
two maps by their structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004), as Quantus: both
maps normalised by their largest absolute value (`normalise`, default true), flattened row-major,
and SSIM computed over the flattened vectors with scikit-image's defaults: a uniform window of 7,
sample covariances, K1 = 0.01, K2 = 0.03, data range = max - min over both maps, the mean over the
positions at least 3 from either end:

    SSIM = mean_p [(2 mu_a mu_b + C1)(2 s_ab + C2)] / [(mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)]

with local means mu, variances s^2 and covariance s_ab over each window, C1 = (0.01 R)^2, C2 = (0.03 R)^2.
Lower is better (the other class's map differs). Figures: `other_class` (c'). Cost: one
re-explanation.

Differences from Quantus, on purpose: K is the model's number of classes (Quantus takes
`num_classes`, default 1000, as a parameter) and the other class comes from the request's seed
(Quantus reseeds numpy's global generator with 42); maps of fewer than 7 entries use the largest
odd window that fits (scikit-image refuses them), and two identical constant maps are 1 (SSIM is 0 / 0
there). The SSIM is explaind's own (scikit-image is not a service dependency), checked against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FailedPrecondition
from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Bool
from .base import RANDOMISATION, Metric, MetricContext, MetricSteps, MetricValue, positions
from .reexplained import explanation_rows, flat, normalise_by_max

WINDOW, K1, K2 = 7, 0.01, 0.03


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The structural similarity of two maps flattened (scikit-image's structural_similarity on 1-D
    arrays with its defaults and data_range = max - min over both)."""
    a, b = flat(a), flat(b)
    window = min(WINDOW, a.size if a.size % 2 else a.size - 1)
    both = np.concatenate([a, b])
    data_range = float(abs(both.max() - both.min()))
    if data_range == 0:
        return 1.0  # two equal constant maps (0 / 0 in the formula)
    def mean(v: np.ndarray) -> np.ndarray:
        from scipy import ndimage  # lazy: scipy is not imported by the server until a request needs it
        return ndimage.uniform_filter(v, size=window)
    cov_norm = window / (window - 1)
    ua, ub = mean(a), mean(b)
    va = cov_norm * (mean(a * a) - ua * ua)
    vb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua ** 2 + ub ** 2 + c1) * (va + vb + c2))
    pad = (window - 1) // 2
    return float(s[pad:s.size - pad].mean(dtype=np.float64))


class RandomLogit(Metric):
    name = "random_logit"
    title = "Random logit"
    reference = "Sixt, Granz & Landgraf 2020, When Explanations Lie: Why Many Modified BP Attributions Fail"
    description = "SSIM between the explanation and the explanation of a random other class (lower is better)."
    category = RANDOMISATION
    kinds = ANY_KIND
    reexplains = True
    higher_is_better = False
    figures = ("other_class",)
    params = (
        Bool("normalise", True, "divide each map by its largest absolute value before comparing"),
    )

    def unavailable(self, model: ModelView) -> str:
        if positions(model) < 3:
            return "random_logit's SSIM needs maps of at least 3 entries"
        return ""

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return explanation_rows(method_rows)

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        classes = len(ctx.explain.prediction.probabilities)
        if classes < 2:
            raise FailedPrecondition("metric 'random_logit' needs a model of at least 2 classes")
        other = int(ctx.rng.integers(classes - 1))
        other += other >= ctx.target
        other_map = yield ctx.reexplain(ctx.x, other)
        prepare = normalise_by_max if params["normalise"] else np.asarray
        value = ssim(prepare(ctx.attribution), prepare(other_map))
        return MetricValue(value, figures={"other_class": float(other)})
