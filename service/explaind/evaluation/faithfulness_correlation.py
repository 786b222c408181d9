"""Faithfulness correlation (Bhatt, Weller & Moura, IJCAI 2020, Evaluating and Aggregating
Feature-based Model Explanations; Quantus's FaithfulnessCorrelation): does the attribution of a
random subset of pixels predict how much removing them lowers the score?

Draw `nr_runs` subsets S_r of `subset_size` pixels (features) uniformly without replacement, replace
each subset by the baseline (each run on the unperturbed input) and take Pearson's correlation over
the runs between the attribution's sum over the subset and the score's drop:

    FC = corr_r( sum_{p in S_r} a_p , f(x) - f(x with S_r replaced) )

Higher is better (1: the map's sums predict the drops exactly). Defaults (Quantus's): 100 runs,
subsets of 224 (at most half the input's pixels or features, so that small inputs such as tabular
rows still vary between runs), baseline black (the input's minimum; white, mean, zero also); the request's score
(Quantus scores logits by default: ask for LOGIT to match). A subset larger than the input is
refused. Curves: `attribution_sums` and `score_drops` [nr_runs]. NaN when either is constant.

Difference from Quantus, kept on purpose: Quantus draws its subsets among the C * H * W channel
values (the [H, W] map broadcast over the channels), so a "pixel" of its subset may be one channel
of a pixel; explaind draws whole pixels, the unit its maps attribute. On one-channel images and
tabular models the two are the same distribution (tests/reference compares them there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Choice, Int
from .base import FAITHFULNESS, Metric, MetricContext, MetricSteps, MetricValue, positions
from .perturbation import (BASELINE_TEXT, BASELINES, BLACK, baseline_value, channels_pixels, model_input, pearson,
                           subset_stage)


def subset_correlation(ctx: MetricContext, sizes: np.ndarray, baseline: str) -> MetricSteps:
    """Yields the subsets' stage; returns their correlation, with the sums and drops as curves."""
    cp = channels_pixels(ctx)
    fill = model_input(ctx, np.full_like(cp, baseline_value(cp, baseline)))
    reducer = yield subset_stage(ctx, sizes, fill)
    drops = ctx.target_score() - reducer.scores
    return MetricValue(pearson(reducer.sums, drops), curves={"attribution_sums": reducer.sums, "score_drops": drops})


class FaithfulnessCorrelation(Metric):
    name = "faithfulness_correlation"
    title = "Faithfulness correlation"
    reference = "Bhatt, Weller & Moura 2020, Evaluating and Aggregating Feature-based Model Explanations"
    description = "Correlation between the attribution of random pixel subsets and the score drop when they are removed."
    category = FAITHFULNESS
    kinds = ANY_KIND
    higher_is_better = True
    curves = ("attribution_sums", "score_drops")
    params = (
        Int("nr_runs", 100, "random subsets drawn (one model evaluation each)", 2),
        Int("subset_size", lambda lim: max(1, min(224, positions(lim.model) // 2)), "pixels (features) in each subset",
            1, lambda lim: positions(lim.model), shown="224 (at most half the pixels or features)"),
        Choice("baseline", BLACK, BASELINES, f"what a removed pixel shows: {BASELINE_TEXT}"),
    )

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return params["nr_runs"]

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        sizes = np.full(params["nr_runs"], params["subset_size"], np.int64)
        return (yield from subset_correlation(ctx, sizes, params["baseline"]))
