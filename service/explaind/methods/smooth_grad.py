"""SmoothGrad (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise").

attribution = post(mean_i d f_c / d x (x + sigma z_i)), z_i ~ N(0, I), with
sigma = noise_level * (max(x) - min(x)) (default noise_level 0.15, as the paper) or an absolute
`stdev`; 50 samples. The noise is made in the graph from one integer seed per sample
(`onnxgraph.noise`), drawn from the request's seeded generator: same seed, same map.
The post-processing (raw by default) applies to the averaged gradient. Score: the logit.
Partial answer at the deadline (allow_partial): the mean over the noisy copies evaluated so far (the
first ones drawn from the seed), at least one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Settings
from ..errors import InvalidArgument
from ..onnxgraph.variants import gradient as g
from .base import MethodContext, ModelView, Result, Stages
from .gradient_base import GradientMethod, channel_reduction, gradient_stage, postprocess, postprocess_param, reduce_channels
from .params import Float, Int


NOISE_LEVEL = 0.15


class SmoothGrad(GradientMethod):
    name = "smooth_grad"
    title = "SmoothGrad"
    reference = "Smilkov et al. 2017, SmoothGrad: removing noise by adding noise"
    description = "Mean gradient over noisy copies of the input."
    partial_results = "the mean gradient over the noisy copies evaluated so far (the first ones drawn from the seed)"
    params = (
        Int("num_samples", 50, "noisy copies", 1, lambda lim: lim.settings.max_rows_per_request),
        Float("noise_level", None, "sigma as a fraction of max(x) - min(x)", 0.0, 10.0, shown="0.15"),
        Float("stdev", None, "absolute sigma, instead of noise_level", 0.0, exclusive_low=True),
        postprocess_param("raw", ", applied to the mean gradient"),
        channel_reduction("none"),
    )

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return params["num_samples"]

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        if "stdev" in params and "noise_level" in params:
            raise InvalidArgument(f"{self.name}.stdev", "either stdev (absolute) or noise_level (relative to the "
                                  "input's range), not both", f"stdev {params['stdev']} and noise_level "
                                  f"{params['noise_level']}")
        if "stdev" not in params:  # only the one used is reported
            params["noise_level"] = params.get("noise_level", NOISE_LEVEL)
        return params

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        n = params["num_samples"]
        sigma = params["stdev"] if "stdev" in params else params["noise_level"] * float(ctx.x.max() - ctx.x.min())
        seeds = ctx.rng.integers(0, 2**31 - 1, size=n, dtype=np.int64)
        grads = yield gradient_stage(ctx, path=g.PATH_NOISE, weights=np.full(n, 1.0 / n), codes={"noise_seed": seeds},
                                     constants={"sigma": np.array(sigma, np.float32)}, partial=True)
        mean = grads.total if grads.rows == n else grads.total * (n / grads.rows)  # partial: over the rows in
        values = postprocess(mean, params["postprocess"])
        return Result(reduce_channels(values, params.get("channel_reduction"), ctx.model))
