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
together); black, white, zero also. One model evaluation per segment (SLIC gives about 100): the
segmentation depends only on the input, so it runs at planning (a few ms at 64 x 64, tens at
224 x 224) and the row budget is checked against the exact segment count, which the stage then
reuses (planned rows == rows run; progress ends at its total).
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

SEGMENTS = "irof_segments"  # MetricContext.memo: the labels, from planning to the stage


def slic_segments(model: ModelView, x: np.ndarray) -> np.ndarray:
    """SLIC labels [H, W] (0..S-1) of the input in model input space, channels last, float64."""
    image = np.asarray(x, np.float64)
    hwc = image if model.signature.layout == "NHWC" else np.moveaxis(image, 0, -1)
    return segment(np.ascontiguousarray(hwc), "slic", start_label=0)


def segments_of(model: ModelView, x: np.ndarray, memo: dict[str, Any]) -> np.ndarray:
    """The input's SLIC labels, segmented once per request (at planning) and kept in `memo`."""
    if SEGMENTS not in memo:
        memo[SEGMENTS] = slic_segments(model, x)
    return memo[SEGMENTS]


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

    def planned_rows_for(self, params: dict[str, Any], model: ModelView, method_rows: int, x: np.ndarray,
                         memo: dict[str, Any]) -> int:
        """One row per segment of the input (segmented here; the stage reuses the labels)."""
        return int(segments_of(model, x, memo).max()) + 1

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        labels = segments_of(ctx.model, ctx.x, ctx.memo).reshape(-1)
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
