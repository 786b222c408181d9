"""DeepLIFT SHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions", DeepSHAP;
Captum `DeepLiftShap`).

attribution = mean over the baselines b of the background distribution of DeepLIFT(x, b) =
(x - b) * m_b (see deep_lift.py: rescale rule, Captum's max-pool rule, linear layers as gradients).
The baselines are the model's background rows (model.yaml `background`, tabular models), all of
them, each a row run beside the input in one doubled batch. Figures: the convergence delta
sum(attribution) - (f(x) - mean_b f(b)), the sum, f(x) and mean_b f(b) (`f_baseline`). Score: the
logit by default. One model evaluation per background row.
"""

from __future__ import annotations

from typing import Any

from .base import MethodContext, ModelView, Result, Stages
from .deep_lift import FIGURES, RULE, deep_lift_stage
from .gradient_base import GradientMethod


class DeepLiftShap(GradientMethod):
    name = "deep_lift_shap"
    title = "DeepLIFT SHAP"
    reference = "Lundberg & Lee 2017, A Unified Approach to Interpreting Model Predictions (DeepSHAP); " \
                "Captum DeepLiftShap"
    description = "DeepLIFT averaged over the model's background rows as baselines."
    kinds = frozenset({"tabular"})
    rules_needed = (RULE,)
    figures = FIGURES

    def unavailable(self, model: ModelView) -> str:
        return super().unavailable(model) or ("" if model.background is not None else
                                              "the model has no background (model.yaml background)")

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return len(ctx.model.background)  # type: ignore[arg-type]

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        reducer = yield deep_lift_stage(ctx, ctx.model.background)  # type: ignore[arg-type]
        return Result(reducer.total, reducer.figures())
