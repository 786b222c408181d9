"""SmoothGrad (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise").

attribution = post(mean_i d f_c / d x (x + sigma z_i)), z_i ~ N(0, I), with
sigma = noise_level * (max(x) - min(x)) (default noise_level 0.15, as the paper) or an absolute
`stdev`; 50 samples. The noise is made in the graph from one integer seed per sample
(`onnxgraph.noise`), drawn from the request's seeded generator: same seed, same map.
The post-processing (raw by default) applies to the averaged gradient. Score: the logit.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import Settings
from ..errors import InvalidArgument
from ..onnxgraph import gradients as g
from .base import MethodContext, ModelView, Parameter, Reducer, float_param, int_param
from .gradient_base import (POSTPROCESS, GradientMethod, GradientPlan, channel_reduction_param, choice_param,
                            postprocess, reduce_channels)


class SmoothGrad(GradientMethod):
    name = "smooth_grad"
    title = "SmoothGrad"
    reference = "Smilkov et al. 2017, SmoothGrad: removing noise by adding noise"
    description = "Mean gradient over noisy copies of the input."
    parameters = (
        Parameter("num_samples", "int32", "50", "noisy copies"),
        Parameter("noise_level", "float", "0.15", "sigma as a fraction of max(x) - min(x)"),
        Parameter("stdev", "float", "unset", "absolute sigma; overrides noise_level"),
        Parameter("postprocess", "string", "raw", "raw | absolute | squared, applied to the mean gradient"),
        Parameter("channel_reduction", "string", "none", "none | max | sum | mean (images)"),
    )

    def resolve(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        params: dict[str, Any] = {
            "num_samples": int_param(given, self.name, "num_samples", 50, 1, settings.max_rows_per_request),
            "noise_level": float_param(given, self.name, "noise_level", 0.15, 0.0, 10.0),
            "postprocess": choice_param(given, self.name, "postprocess", "raw", POSTPROCESS),
            "channel_reduction": channel_reduction_param(given, self.name, "none", model),
        }
        if "stdev" in given:
            if "noise_level" in given:
                raise InvalidArgument(f"{self.name}.stdev", "either stdev (absolute) or noise_level (relative to the "
                                      "input's range), not both", f"stdev {given['stdev']} and noise_level "
                                      f"{given['noise_level']}")
            params["stdev"] = float_param(given, self.name, "stdev", 0.0, 0.0, 1e6)
            if params["stdev"] <= 0:
                raise InvalidArgument(f"{self.name}.stdev", "a positive number", given["stdev"])
            del params["noise_level"]  # stdev replaces it: the reported parameters are the ones used
        return params

    def sigma(self, params: dict[str, Any], x: np.ndarray) -> float:
        if "stdev" in params:
            return params["stdev"]
        return params["noise_level"] * float(x.max() - x.min())

    def gradient_plan(self, params: dict[str, Any], ctx: MethodContext) -> GradientPlan:
        n = params["num_samples"]
        seeds = ctx.rng.integers(0, 2**31 - 1, size=n, dtype=np.int64)
        return GradientPlan(path=g.PATH_NOISE, weights=np.full(n, 1.0 / n), codes={"noise_seed": seeds},
                            constants={"sigma": np.array(self.sigma(params, ctx.x), np.float32)})

    def finish(self, params: dict[str, Any], ctx: MethodContext, reducer: Reducer) -> np.ndarray:
        values = postprocess(reducer.attribution(), params["postprocess"])
        return reduce_channels(values, params["channel_reduction"], ctx.model)
