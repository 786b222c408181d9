"""Blur IG (Xu, Venugopalan & Sundararajan 2020, "Attribution in Scale and Space"; the PAIR `saliency`
package's `BlurIG` semantics and defaults).

Integrated gradients along the path of ever stronger Gaussian blurs of the input, from x (sigma 0)
towards sigma = max_sigma: sigma_i = i max_sigma / steps (sqrt: sqrt(i max_sigma / steps)),
i = 0 .. steps, and
    attribution = -sum_{i < steps} (sigma_{i+1} - sigma_i) * d blur(x, s)/d s (sigma_i) * grad f_c(blur(x, sigma_i)),
d blur / d s by the forward difference (blur(x, sigma_i + grad_step) - blur(x, sigma_i)) / grad_step.
The blur is scipy's `gaussian_filter` (truncate 4, zero padding: mode "constant") over the spatial
axes only, as `saliency` blurs an H x W x C image with sigma [s, s, 0]. Defaults: 100 steps,
max_sigma 50 pixels, grad_step 0.01. (saliency's batched loop weighs a whole batch by its last
step's sigma difference; with batch_size 1, its default, the two agree; here every step has its own.)
The gradients come from the model's own graph, one row per step; the blurred inputs are the rows'
per-job inputs, a few dozen steps at a time. Score: the logit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import MethodContext, Result, Stages
from .gradient_base import GradientMethod, channel_reduction, gradient_stage, reduce_channels
from .params import IMAGE, Bool, Float, Int

CONCURRENT_STEPS = 32  # blurred inputs in flight at once (each one job)


def sigmas(steps: int, max_sigma: float, sqrt: bool) -> np.ndarray:
    """sigma_0 .. sigma_steps."""
    linear = np.arange(steps + 1, dtype=np.float64) * max_sigma / steps
    return np.sqrt(linear) if sqrt else linear


def gaussian_blur(x: np.ndarray, sigma: float, spatial_axes: tuple[int, int]) -> np.ndarray:
    """scipy gaussian_filter over the spatial axes, zero padding; sigma 0 returns x."""
    if sigma == 0:
        return x
    from scipy import ndimage  # lazy: scipy is not imported by the server until a request needs it
    per_axis = [0.0] * x.ndim
    for axis in spatial_axes:
        per_axis[axis] = sigma
    return ndimage.gaussian_filter(x, sigma=per_axis, mode="constant")


class BlurIg(GradientMethod):
    name = "blur_ig"
    title = "Blur IG"
    reference = "Xu, Venugopalan & Sundararajan 2020, Attribution in Scale and Space; PAIR saliency BlurIG"
    description = "Integrated gradients along a path of Gaussian blurs of the input, from sharp to max_sigma."
    kinds = IMAGE
    figures = ("attribution_sum",)
    params = (
        Int("steps", 100, "blur steps (one gradient each)", 1, lambda lim: lim.settings.max_rows_per_request),
        Float("max_sigma", 50.0, "the strongest blur's sigma, pixels", 0.0, 10_000.0, exclusive_low=True),
        Float("grad_step", 0.01, "sigma step of d blur / d sigma", 0.0, 10.0, exclusive_low=True),
        Bool("sqrt", False, "sigmas spaced as square roots"),
        channel_reduction("none"),
    )

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return params["steps"]

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        steps, grad_step = params["steps"], params["grad_step"]
        sigma = sigmas(steps, params["max_sigma"], params["sqrt"])
        axes = (1, 2) if ctx.model.signature.layout == "NCHW" else (0, 1)
        x = ctx.x.astype(np.float32)
        total = np.zeros(x.shape, np.float64)
        for start in range(0, steps, CONCURRENT_STEPS):
            group = range(start, min(steps, start + CONCURRENT_STEPS))
            blurred = [gaussian_blur(x, float(sigma[i]), axes) for i in group]
            grads = yield [gradient_stage(ctx, constants={"x0": np.asarray(b, np.float32)}) for b in blurred]
            for i, b, g in zip(group, blurred, grads):
                slope = (gaussian_blur(x, float(sigma[i]) + grad_step, axes) - b) / grad_step
                total += (sigma[i + 1] - sigma[i]) * slope.astype(np.float64) * g.total
        attribution = -total
        return Result(reduce_channels(attribution, params.get("channel_reduction"), ctx.model),
                      {"attribution_sum": float(attribution.sum())})
