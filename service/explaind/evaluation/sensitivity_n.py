"""Sensitivity-n (Ancona, Ceolini, Öztireli & Gross, ICLR 2018, Towards better understanding of
gradient-based attribution methods for Deep Neural Networks): for subsets of n pixels, does the sum
of their attribution equal the score's drop when they are removed?

For each of `steps` subset sizes n_k = max(1, round(k / steps * n_max_percentage * P)), k = 1..steps,
draw `nr_samples` subsets of n_k pixels (features) uniformly without replacement, replace each by
the baseline (on the unperturbed input), and take Pearson's correlation over the samples between the
subset's attribution sum and the score drop f(x) - f(x with the subset replaced): the curve
`correlations` [steps] over `subset_sizes`. The value is its mean over n (sizes whose
correlation is undefined, NaN, left out). Higher is better
(Ancona et al.'s sensitivity-n holds for all n only for linear models). At each n this is exactly
faithfulness correlation with subset_size n (Bhatt et al. generalised Ancona's definition so).

Defaults: 10 subset sizes, 100 samples each (1000 model evaluations), n up to 80% of the pixels
(Quantus's n_max_percentage 0.8), baseline black (the input's minimum; white, mean, zero also).

Difference from Quantus, kept on purpose: Quantus's SensitivityN does not sample subsets. It removes
features cumulatively in order of attribution (one at a time) and correlates, at each n, the drops
and sums *across the inputs of the batch*, so its figure belongs to a data set, not to one
explanation. explaind follows the paper (random subsets of each size, correlated per input), which
gives one figure per explanation; tests/reference checks each n against Quantus's
FaithfulnessCorrelation at subset_size n, the same estimator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Choice, Float, Int
from .base import FAITHFULNESS, Metric, MetricContext, MetricSteps, MetricValue, positions
from .perturbation import BASELINE_TEXT, BASELINES, BLACK, baseline_value, channels_pixels, model_input, pearson, subset_stage


def subset_sizes(params: dict[str, Any], pixels: int) -> np.ndarray:
    steps, share = params["steps"], params["n_max_percentage"]
    k = np.arange(1, steps + 1)
    return np.clip(np.round(k / steps * share * pixels).astype(np.int64), 1, pixels)


class SensitivityN(Metric):
    name = "sensitivity_n"
    title = "Sensitivity-n"
    reference = ("Ancona, Ceolini, Öztireli & Gross 2018, Towards better understanding of gradient-based "
                 "attribution methods for Deep Neural Networks")
    description = "Mean over subset sizes n of the correlation between subset attribution sums and score drops."
    category = FAITHFULNESS
    kinds = ANY_KIND
    higher_is_better = True
    curves = ("correlations", "subset_sizes")
    params = (
        Int("steps", 10, "subset sizes n, evenly spaced up to n_max_percentage of the pixels", 1,
            lambda lim: positions(lim.model)),
        Int("nr_samples", 100, "random subsets drawn per size (one model evaluation each)", 2),
        Float("n_max_percentage", 0.8, "the largest subset, as a fraction of the pixels (features)", 0.0, 1.0,
              exclusive_low=True),
        Choice("baseline", BLACK, BASELINES, f"what a removed pixel shows: {BASELINE_TEXT}"),
    )

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return params["steps"] * params["nr_samples"]

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        pixels, samples = ctx.attribution.size, params["nr_samples"]
        sizes = subset_sizes(params, pixels)
        cp = channels_pixels(ctx)
        fill = model_input(ctx, np.full_like(cp, baseline_value(cp, params["baseline"])))
        reducer = yield subset_stage(ctx, np.repeat(sizes, samples), fill)
        drops = (ctx.target_score() - reducer.scores).reshape(len(sizes), samples)
        sums = reducer.sums.reshape(len(sizes), samples)
        correlations = np.array([pearson(s, d) for s, d in zip(sums, drops)])
        return MetricValue(float(np.nanmean(correlations)) if np.isfinite(correlations).any() else float("nan"),
                           curves={"correlations": correlations, "subset_sizes": sizes.astype(np.float64)})
