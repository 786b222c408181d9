"""Pixel flipping (Bach et al. 2015, On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation; Quantus's PixelFlipping): the target score as the most relevant
pixels are flipped to a baseline, `features_in_step` at a time, the flips accumulating.

Order the pixels (features) by attribution, most relevant first (ties in row-major order), replace
the next k = `features_in_step` of them by the baseline at each step, and score the input after
every step: s_1 .. s_n, n = ceil(P / k) (the last step flips everything). As Quantus, the curve does
not include the unperturbed input, and the value is its area by the trapezoid rule with unit spacing
(Quantus's calculate_auc: np.trapz(s, dx=1), np.trapezoid in numpy 2):

    AUC = sum_{i=1}^{n-1} (s_i + s_{i+1}) / 2

so it grows with n; lower is better (a faithful map kills the score first). The baseline is
Quantus's, computed on the input as it stands before each step: black (default, the input's
minimum), white (maximum), mean (the current mean), zero. Curves: `scores` [n], `fractions` [n]
(pixels flipped).

Defaults. Quantus flips one feature a step (features_in_step 1), a feature being one channel value:
on a 3 x 224 x 224 input that is 150528 model evaluations. explaind flips pixels (all channels at
once, its maps being per pixel), and its default step is ceil(P / 100) pixels, i.e. 100 steps
(1 pixel a step for inputs of at most 100 pixels or features, which is Quantus's default there).
Quantus's features_in_step = C * k with the same baseline gives the same curve (its C equal
attributions of one pixel are flipped together), which tests/reference checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Choice, Int
from .base import FAITHFULNESS, Metric, MetricContext, MetricSteps, MetricValue, positions
from .curves import MORF, curve_stage, order, ranks_of
from .perturbation import BASELINE_TEXT, BASELINES, BLACK, channels_pixels, cumulative_fill, model_input


def steps_of(params: dict[str, Any], model: ModelView) -> int:
    return -(-positions(model) // params["features_in_step"])


class PixelFlipping(Metric):
    name = "pixel_flipping"
    title = "Pixel flipping"
    reference = ("Bach, Binder, Montavon, Klauschen, Müller & Samek 2015, On Pixel-Wise Explanations for "
                 "Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation")
    description = "Area under the target score as the most relevant pixels are flipped to a baseline (lower is better)."
    category = FAITHFULNESS
    kinds = ANY_KIND
    higher_is_better = False
    curves = ("scores", "fractions")
    params = (
        Int("features_in_step", lambda lim: -(-positions(lim.model) // 100),
            "pixels (features) flipped each step", 1, lambda lim: positions(lim.model),
            shown="ceil(P / 100) (100 steps)"),
        Choice("baseline", BLACK, BASELINES, f"what a flipped pixel shows: {BASELINE_TEXT}"),
    )

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return steps_of(params, model)

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        step = params["features_in_step"]
        rank = ranks_of(order(ctx.attribution, MORF))
        total = len(rank)
        steps = -(-total // step)
        group = rank // step  # the step that flips each pixel
        fill = cumulative_fill(channels_pixels(ctx), group, steps, params["baseline"])
        flipped = np.minimum(np.arange(1, steps + 1, dtype=np.int64) * step, total)
        reducer = yield curve_stage(ctx, rank, flipped, ctx.x, model_input(ctx, fill))
        scores = reducer.scores
        return MetricValue(float(np.trapezoid(scores, dx=1.0)), curves={"scores": scores, "fractions": flipped / total})
