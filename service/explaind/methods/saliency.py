"""Saliency (vanilla gradient; Simonyan, Vedaldi & Zisserman 2013, "Deep Inside Convolutional Networks").

attribution = post(d f_c / d x), post = |.| (default), (.)^2 or raw, then reduced over channels:
max (default, Simonyan's map), sum, mean, or none ([C, H, W], Captum `Saliency(abs=True)`).
Score: the logit by default. One model evaluation (one gradient row).
"""

from __future__ import annotations

from typing import Any

from .base import MethodContext, Result, Stages
from .gradient_base import GradientMethod, channel_reduction, gradient_stage, postprocess, postprocess_param, reduce_channels


class Saliency(GradientMethod):
    name = "saliency"
    title = "Saliency (vanilla gradient)"
    reference = "Simonyan, Vedaldi & Zisserman 2013, Deep Inside Convolutional Networks; Captum Saliency"
    description = "Gradient of the target score with respect to the input, post-processed per pixel."
    params = (postprocess_param("absolute"), channel_reduction("max"))

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        grads = yield gradient_stage(ctx)
        values = postprocess(grads.total, params["postprocess"])
        return Result(reduce_channels(values, params.get("channel_reduction"), ctx.model))
