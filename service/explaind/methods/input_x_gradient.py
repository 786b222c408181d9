"""Gradient x input (Shrikumar et al. 2016; Captum `InputXGradient`).

attribution = x * d f_c / d x, per channel by default (channel_reduction none | sum | mean | max).
Score: the logit by default. One model evaluation.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import Settings
from .base import MethodContext, ModelView, Parameter, Reducer
from .gradient_base import GradientMethod, channel_reduction_param, reduce_channels


class InputXGradient(GradientMethod):
    name = "input_x_gradient"
    title = "Gradient x input"
    reference = "Shrikumar et al. 2016, Not Just a Black Box; Captum InputXGradient"
    description = "The input times the gradient of the target score with respect to it."
    parameters = (Parameter("channel_reduction", "string", "none", "none | max | sum | mean (images)"),)

    def resolve(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        return {"channel_reduction": channel_reduction_param(given, self.name, "none", model)}

    def finish(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> np.ndarray:
        return reduce_channels(ctx.x * reducer.attribution(), params["channel_reduction"], ctx.model)
