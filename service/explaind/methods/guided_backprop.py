"""Guided backpropagation (Springenberg et al. 2014, "Striving for Simplicity"; Captum `GuidedBackprop`).

The gradient of the target score where every ReLU (and ReLU6) passes back only positive gradient,
and only where its forward input was positive: R_in = relu(R_out) * [x > 0]. Per channel by default.
Score: the logit by default. One model evaluation.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import Settings
from .base import MethodContext, ModelView, Parameter, Reducer
from .gradient_base import GradientMethod, GradientPlan, channel_reduction_param, reduce_channels


class GuidedBackprop(GradientMethod):
    name = "guided_backprop"
    title = "Guided backpropagation"
    reference = "Springenberg et al. 2014, Striving for Simplicity: The All Convolutional Net; Captum GuidedBackprop"
    description = "Gradient with only positive signals passed back through ReLUs where they were active."
    kinds = frozenset({"image"})
    rule = "guided"
    rules_needed = ("guided",)
    parameters = (Parameter("channel_reduction", "string", "none", "none | max | sum | mean"),)

    def resolve(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        return {"channel_reduction": channel_reduction_param(given, self.name, "none", model)}

    def gradient_plan(self, params: dict[str, Any], ctx: MethodContext) -> GradientPlan:
        return GradientPlan(rule=self.rule)

    def finish(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> np.ndarray:
        return reduce_channels(reducer.attribution(), params["channel_reduction"], ctx.model)
