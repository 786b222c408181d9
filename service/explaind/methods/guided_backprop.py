"""Guided backpropagation (Springenberg et al. 2014, "Striving for Simplicity"; Captum `GuidedBackprop`).

The gradient of the target score where every ReLU (and ReLU6) passes back only positive gradient,
and only where its forward input was positive: R_in = relu(R_out) * [x > 0]. Per channel by default.
Score: the logit by default. One model evaluation.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import MethodContext, Result, Stages
from .gradient_base import GradientMethod, channel_reduction, gradient_stage, reduce_channels


class GuidedBackprop(GradientMethod):
    name = "guided_backprop"
    title = "Guided backpropagation"
    reference = "Springenberg et al. 2014, Striving for Simplicity: The All Convolutional Net; Captum GuidedBackprop"
    description = "Gradient with only positive signals passed back through ReLUs where they were active."
    kinds = frozenset({"image"})
    rule: ClassVar[str] = "guided"
    rules_needed = ("guided",)
    params = (channel_reduction("none"),)

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        grads = yield gradient_stage(ctx, rule=self.rule)
        return Result(reduce_channels(grads.total, params.get("channel_reduction"), ctx.model))
