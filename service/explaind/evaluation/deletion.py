"""Deletion (Petsiuk, Das & Saenko, BMVC 2018, RISE paper section 4.1): how fast the target score
falls as the most relevant pixels are removed.

Order the pixels (features) by attribution, most relevant first (MoRF; `order: lerf` reverses it),
replace `step` = ceil(P / steps) of them at a time by the substrate, and score every stage of the
removal: scores s_0 (the input) .. s_n (all replaced), n = ceil(P / step). The value is the area under
the curve over the removed fraction in [0, 1], trapezoid rule:

    AUC = (sum_i s_i - s_0 / 2 - s_n / 2) / n

Lower is better for MoRF: a faithful map names the pixels whose removal kills the score first.
Defaults: 100 steps; substrate zero (the paper's deletion, in model input space); MoRF; the
request's score (probability unless LOGIT). Curves: `scores` [n + 1] and `fractions` [n + 1].
Ties in the attribution keep pixel order (row-major). Tabular: features instead of pixels.
"""

from __future__ import annotations

from typing import Any


from ..methods.base import ModelView
from ..methods.params import ANY_KIND, Choice, Int
from .base import FAITHFULNESS, Metric, MetricContext, MetricSteps, MetricValue, positions
from .curves import BLUR, LERF, MEAN, MORF, ZERO, auc, curve_rows, curve_stage, order, ranks_of, substrate


def step_size(params: dict[str, Any], model: ModelView) -> int:
    return -(-positions(model) // params["steps"])


class Deletion(Metric):
    name = "deletion"
    title = "Deletion"
    reference = "Petsiuk, Das & Saenko 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models"
    description = "Area under the target score as the most relevant pixels are removed (lower is better)."
    category = FAITHFULNESS
    kinds = ANY_KIND
    higher_is_better = False
    curves = ("scores", "fractions")
    params = (
        Int("steps", 100, "removal steps: ceil(P / steps) pixels or features each", 1,
            lambda lim: positions(lim.model)),
        Choice("substrate", ZERO, (ZERO, BLUR, MEAN), "what removed pixels show: zero, blur or mean"),
        Choice("order", MORF, (MORF, LERF), "morf: most relevant first; lerf: least relevant first"),
    )
    reveal = False  # insertion: start from the substrate and reveal the input

    def planned_rows(self, params: dict[str, Any], model: ModelView, method_rows: int) -> int:
        return len(curve_rows(positions(model), step_size(params, model)))

    def stages(self, params: dict[str, Any], ctx: MetricContext) -> MetricSteps:
        rank = ranks_of(order(ctx.attribution, params["order"]))
        replaced = curve_rows(len(rank), step_size(params, ctx.model))
        fill = substrate(ctx, params["substrate"], self.name)
        start, end = (fill, ctx.x) if self.reveal else (ctx.x, fill)
        reducer = yield curve_stage(ctx, rank, replaced, start, end)
        scores = reducer.scores
        return MetricValue(auc(scores), curves={"scores": scores, "fractions": replaced / len(rank)})
