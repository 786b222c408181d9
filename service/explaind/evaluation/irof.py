"""IROF, iterative removal of features (Rieger & Hansen 2020, IROF: a low resource evaluation metric
for explanation methods; Quantus's IROF): the area over the target score's curve as superpixels are
removed in order of their mean relevance.

Segment the input with SLIC (scikit-image's defaults, start_label 0, on the input in model input
space as an [H, W, C] float64 image, as Quantus), rank the S segments by their mean attribution,
most relevant first, and remove them one after the other (cumulatively) by the baseline, scoring
after each removal: s_1 .. s_S, each divided by the unperturbed score s_0. The value is Quantus's
area over that curve, the trapezoid rule with unit spacing:

    IROF = S - sum_{i=1}^{S-1} (s_i / s_0 + s_{i+1} / s_0) / 2

Higher is better (removing the relevant segments first kills the score early). It grows with S; the
paper's normalised form is IROF / S (figure `normalised`). Defaults (Quantus's): SLIC; baseline mean
(a removed segment shows the mean of the input as it stands before its removal, all channels
together); black, white, zero also. One model evaluation per segment (SLIC gives about 100); the row budget is
checked against an upper bound known from the input size (`most_segments`: 256 at 64 x 64, 200 at
224 x 224), the one place where explaind's planned rows exceed the rows run: metrics are planned
before the input is seen, and making it exact would segment the input at planning (a few ms at
64 x 64, tens at 224 x 224) for a bound that only ever refuses a request a little early (progress
then ends below its total; the stats report the rows run).
Curves: `scores` [S] (divided by s_0), `segments` [S] (the segment removed at each step).
Images only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.base import ModelView
from ..methods.lime_core import segment
from ..methods.params import IMAGE, Choice
from .base import FAITHFULNESS, Metric, MetricContext, MetricSteps, MetricValue
from .curves import curve_stage
from .perturbation import BASELINE_TEXT, BASELINES, MEAN, channels_pixels, cumulative_fill, model_input

SLIC_SEGMENTS, SLIC_MIN_SIZE_FACTOR = 100, 0.5  # scikit-image's slic defaults (n_segments, min_size_factor)


def most_segments(model: ModelView) -> int:
    """An upper bound on SLIC's segment count for this input size, known before the input is seen:
    slic starts from a regular grid of centres and, enforcing connectivity, merges every segment
    smaller than min_size = int(0.5 * P / centres) pixels, so at most P / min_size remain."""
    height, width = model.signature.spatial_shape
    from skimage.util import regular_grid  # lazy: skimage loads when IROF is asked for
    centres = int(np.prod([len(range(*s.indices(n))) for s, n in
                           zip(regular_grid((1, height, width), SLIC_SEGMENTS), (1, height, width))]))
    min_size = max(1, int(SLIC_MIN_SIZE_FACTOR * height * width / centres))
    return (height * width) // min_size


def slic_segments(ctx: MetricContext) -> np.ndarray:
    """SLIC labels [H, W] (0..S-1) of the input in model input space, channels last, float64."""
    height, width = ctx.model.signature.spatial_shape
    hwc = np.moveaxis(channels_pixels(ctx).reshape(-1, height, width), 0, -1)
    return segment(np.ascontiguousarray(hwc, np.float64), "slic", start_label=0)


class Irof(Metric):
    name = "irof"
    title = "IROF (iterative removal of features)"
    reference = "Rieger & Hansen 2020, IROF: a low resource evaluation metric for explanation methods"
    description = "Area over the target score's curve as superpixels are removed by mean relevance (higher is better)."
    category = FAITHFULNESS
    kinds = IMAGE
    higher_is_better = True
    curves = ("scores", "segments")
    figures = ("normalised", "segment_count")
    params = (
        Choice("baseline", MEAN, BASELINES, f"what a removed segment shows: {BASELINE_TEXT}"),
    )

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        # The segment count is known only once the input is segmented: the budget is checked
        # against its upper bound (SLIC gives about 100; the stage runs one row per segment).
        return most_segments(model)

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        labels = slic_segments(ctx).reshape(-1)
        count = int(labels.max()) + 1
        sizes = np.bincount(labels, minlength=count)
        means = np.bincount(labels, weights=ctx.attribution.reshape(-1), minlength=count) / np.maximum(sizes, 1)
        removal = np.argsort(-means, kind="stable")     # segments, most relevant first
        step_of = np.empty(count, np.int64)
        step_of[removal] = np.arange(count)
        rank = step_of[labels]                           # each pixel: the step removing its segment
        fill = cumulative_fill(channels_pixels(ctx), rank, count, params["baseline"])
        removed = np.arange(1, count + 1, dtype=np.int64)
        reducer = yield curve_stage(ctx, rank, removed, ctx.x, model_input(ctx, fill))
        scores = reducer.scores / ctx.target_score()
        value = count - float(np.trapezoid(scores, dx=1.0))
        return MetricValue(value, curves={"scores": scores, "segments": removal.astype(np.float64)},
                           figures={"normalised": value / count, "segment_count": float(count)})
