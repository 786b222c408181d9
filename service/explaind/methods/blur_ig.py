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
The path is made in the graph (variant `blur_path`, onnxgraph/variants/blur_path.py): a row is one
step's sigma codes, the graph blurs the input (scipy's kernel as matrices), runs the model and gives
d blur / d sigma times the model's own input gradient, which the reducer sums with the step's
weight sigma_{i+1} - sigma_i. One stage of `steps` rows. Score: the logit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.job import RowChunk
from ..onnxgraph.variants.blur_path import CODES, SLOPE_GRAD_OUTPUT, BlurPath, blur_codes
from .base import MethodContext, Reducer, Result, Stage, Stages, row_chunks
from .gradient_base import GradientMethod, channel_reduction, reduce_channels
from .params import IMAGE, Bool, Float, Int


def sigmas(steps: int, max_sigma: float, sqrt: bool) -> np.ndarray:
    """sigma_0 .. sigma_steps."""
    linear = np.arange(steps + 1, dtype=np.float64) * max_sigma / steps
    return np.sqrt(linear) if sqrt else linear


class WeightedSum(Reducer):
    """sum_r weight_r * slope_grad_r (float64)."""

    def __init__(self, shape: tuple[int, ...], weights: np.ndarray) -> None:
        self.total = np.zeros(shape, np.float64)
        self.weights = weights

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        self.total += np.tensordot(self.weights[codes["row"]], rows[SLOPE_GRAD_OUTPUT].astype(np.float64), axes=1)


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
        here = np.array([blur_codes(float(s)) for s in sigma[:-1]])
        further = np.array([blur_codes(float(s) + grad_step) for s in sigma[:-1]])
        values = np.concatenate([here, further, np.full((steps, 1), grad_step)], axis=1).astype(np.float32)
        codes = {name: values[:, i] for i, name in enumerate(CODES)}
        exported = ctx.model.white_box.exported if ctx.model.white_box else None
        reducer = WeightedSum(ctx.x.shape, np.diff(sigma))
        summed = yield Stage(BlurPath(score=ctx.score, exported=exported), ctx.target_constants(),
                             row_chunks(codes, 256), steps, reducer)
        attribution = -summed.total
        return Result(reduce_channels(attribution, params.get("channel_reduction"), ctx.model),
                      {"attribution_sum": float(attribution.sum())})
