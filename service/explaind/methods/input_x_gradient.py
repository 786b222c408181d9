"""Gradient x input (Shrikumar et al. 2016; Captum `InputXGradient`).

attribution = x * d f_c / d x, per channel by default (channel_reduction none | sum | mean | max).
Score: the logit by default. One model evaluation.
"""

from __future__ import annotations

from typing import Any

from .base import MethodContext, Result, Stages
from .gradient_base import GradientMethod, channel_reduction, gradient_stage, reduce_channels


class InputXGradient(GradientMethod):
    name = "input_x_gradient"
    title = "Gradient x input"
    reference = "Shrikumar et al. 2016, Not Just a Black Box; Captum InputXGradient"
    description = "The input times the gradient of the target score with respect to it."
    params = (channel_reduction("none"),)

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        grads = yield gradient_stage(ctx)
        return Result(reduce_channels(ctx.x * grads.total, params.get("channel_reduction"), ctx.model))
