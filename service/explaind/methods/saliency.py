"""Saliency (vanilla gradient; Simonyan, Vedaldi & Zisserman 2013, "Deep Inside Convolutional Networks").

attribution = post(d f_c / d x), post = |.| (default), (.)^2 or raw, then reduced over channels:
max (default, Simonyan's map), sum, mean, or none ([C, H, W], Captum `Saliency(abs=True)`).
Score: the logit by default. One model evaluation (one gradient row).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import Settings
from .base import MethodContext, ModelView, Parameter, Reducer
from .gradient_base import POSTPROCESS, GradientMethod, channel_reduction_param, choice_param, postprocess, reduce_channels


class Saliency(GradientMethod):
    name = "saliency"
    title = "Saliency (vanilla gradient)"
    reference = "Simonyan, Vedaldi & Zisserman 2013, Deep Inside Convolutional Networks; Captum Saliency"
    description = "Gradient of the target score with respect to the input, post-processed per pixel."
    parameters = (
        Parameter("postprocess", "string", "absolute", "raw | absolute | squared"),
        Parameter("channel_reduction", "string", "max", "none | max | sum | mean (images)"),
    )

    def resolve(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        return {"postprocess": choice_param(given, self.name, "postprocess", "absolute", POSTPROCESS),
                "channel_reduction": channel_reduction_param(given, self.name, "max", model)}

    def finish(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> np.ndarray:
        values = postprocess(reducer.attribution(), params["postprocess"])
        return reduce_channels(values, params["channel_reduction"], ctx.model)
