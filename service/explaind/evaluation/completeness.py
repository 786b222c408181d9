"""Completeness (Sundararajan, Taly & Yan, ICML 2017, Axiomatic Attribution for Deep Networks,
section 3, proposition 1): do the attributions add up to the score's change from a baseline?

    value = | sum_i a_i - (f(x) - f(x')) |

with x' the input with every value set to `baseline` (model input space), f the request's score of
the target (probability, or the logit when the request asks for LOGIT), a_i over the pixels
(features). 0 for a complete method (integrated gradients from the same baseline, up to its
quadrature error). One model evaluation: x' is a ranked row (evaluation/curves.py) with every
position replaced. Figures: the signed gap, the attribution's sum, f(x) and f(x').

Defaults: baseline 0 (as explaind's integrated_gradients), abs false, normalise false. Quantus's
Completeness differs on purpose in four ways: it answers whether sum(a) == f(x) - f(x') holds
exactly (a boolean, false for almost any float map), where explaind gives the gap; its baseline
default "black" is the input's minimum (pass that value as `baseline` to reproduce it); it scales the
map by max |a| first (normalise default on), which breaks the comparison of a sum with a change in
score, so explaind offers it off by default; and given a per-pixel [H, W] map of a C-channel image it
replaces only the first H * W values of the flattened input (channel 0), where x' here is the
baseline in every channel, as integrated gradients integrates from.
`abs` (|a| before the sum) and `normalise` mirror Quantus's options for agreement when asked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Bool, Float
from .base import AXIOMATIC, Metric, MetricContext, MetricSteps, MetricValue
from .curves import curve_stage


class Completeness(Metric):
    name = "completeness"
    title = "Completeness"
    reference = "Sundararajan, Taly & Yan 2017, Axiomatic Attribution for Deep Networks"
    description = "Gap between the attribution's sum and the score's change from a baseline (lower is better)."
    category = AXIOMATIC
    kinds = ANY_KIND
    higher_is_better = False
    figures = ("gap", "attribution_sum", "f_input", "f_baseline")
    params = (
        Float("baseline", 0.0, "the baseline x' (every input value), in model input space"),
        Bool("abs", False, "sum abs(a) instead of the signed attribution"),
        Bool("normalise", False, "divide the map by its maximum abs(a) first (Quantus's default)"),
    )

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return 1

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        a = np.asarray(ctx.attribution, np.float64).reshape(-1)
        top = float(np.abs(a).max())
        if params["normalise"] and top > 0:
            a = a / top
        if params["abs"]:
            a = np.abs(a)
        positions = len(a)
        rank = np.arange(positions, dtype=np.int64)
        fill = np.full_like(np.asarray(ctx.x, np.float32), params["baseline"])
        reducer = yield curve_stage(ctx, rank, np.array([positions], np.int64), ctx.x, fill)
        f_input, f_baseline = ctx.target_score(), float(reducer.scores[0])
        total = float(a.sum())
        gap = total - (f_input - f_baseline)
        return MetricValue(abs(gap), figures={"gap": gap, "attribution_sum": total, "f_input": f_input,
                                              "f_baseline": f_baseline})
