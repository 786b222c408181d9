"""Smooth Grad-CAM++ (Omeiza et al. 2019, "Smooth Grad-CAM++: An Enhanced Inference Level
Visualization Technique for Deep Convolutional Neural Network Models"; survey [68]).

Grad-CAM++'s closed form with each power of the layer gradient averaged over n noisy copies of the
input, x + sigma z_i, z_i ~ N(0, I) (the noise made in the graph from one seed per row, as
SmoothGrad's): with D1, D2, D3 the means of g, g^2 and g^3 at the layer A,
alpha = D2 / (2 D2 + sum_ab A_ab * D3 + 1e-6) (0 where D2 = 0), w_k = sum_ij alpha * ReLU(D1),
map = ReLU(sum_k w_k A_k), upsampled as Grad-CAM. A is the layer's activation for the input itself
(read by the prediction's pass). Defaults: 25 samples, sigma = 0.15 (max x - min x) (SmoothGrad's
noise level; `stdev` gives an absolute sigma). With n = 1 and sigma = 0 it is Grad-CAM++. n gradient
rows; progress is streamed. eigen_smooth and aug_smooth as every CAM (methods/cam_base.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Settings
from ..engine.job import RowChunk
from ..errors import InvalidArgument
from ..onnxgraph.variants import gradient as g
from .base import MethodContext, ModelView, Reducer, Stage, row_chunks
from .cam_base import BaseCam, LayerMap, MapStages, cam_params, weighted_map
from .grad_cam_plus_plus import EPS
from .params import Float, Int

NOISE_LEVEL = 0.15


class GradientPowers(Reducer):
    """Sums of g, g^2 and g^3 of the layer gradient over the rows (float64)."""

    def __init__(self) -> None:
        self.sums: list[np.ndarray] | None = None
        self.rows = 0

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        grad = rows[g.LAYER_GRAD_OUTPUT].astype(np.float64)                           # [R, K, h, w]
        powers = [grad.sum(axis=0), (grad ** 2).sum(axis=0), (grad ** 3).sum(axis=0)]
        self.sums = powers if self.sums is None else [s + p for s, p in zip(self.sums, powers)]
        self.rows += len(grad)


def smooth_plus_plus_weights(activation: np.ndarray, d1: np.ndarray, d2: np.ndarray, d3: np.ndarray) -> np.ndarray:
    """[K]: sum_ij D2 / (2 D2 + sum_ab A * D3 + eps) * ReLU(D1), 0 where D2 = 0."""
    sums = activation.sum(axis=(1, 2))[:, None, None]
    alpha = np.where(d2 != 0, d2 / (2 * d2 + sums * d3 + EPS), 0.0)
    return (alpha * np.maximum(d1, 0)).sum(axis=(1, 2))


class SmoothGradCamPlusPlus(BaseCam):
    name = "smooth_grad_cam_plus_plus"
    title = "Smooth Grad-CAM++"
    reference = "Omeiza et al. 2019, Smooth Grad-CAM++"
    description = "Grad-CAM++ with the gradient's powers averaged over noisy copies of the input."
    reads_prediction_layer = True
    params = (
        *cam_params(),
        Int("num_samples", 25, "noisy copies", 1, lambda lim: lim.settings.max_rows_per_request),
        Float("noise_level", None, "sigma as a fraction of max(x) - min(x)", 0.0, 10.0, shown="0.15"),
        Float("stdev", None, "absolute sigma, instead of noise_level", 0.0, exclusive_low=True),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        if "stdev" in params and "noise_level" in params:
            raise InvalidArgument(f"{self.name}.stdev", "either stdev (absolute) or noise_level (relative to the "
                                  "input's range), not both", f"stdev {params['stdev']} and noise_level "
                                  f"{params['noise_level']}")
        if "stdev" not in params:
            params["noise_level"] = params.get("noise_level", NOISE_LEVEL)
        return super().resolve(params, model, settings, score)

    def map_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return int(params["num_samples"])

    def layer_map(self, x: np.ndarray, params: dict[str, Any], ctx: MethodContext) -> MapStages:
        activation = (yield from self.activation(x, params, ctx)).astype(np.float64)
        n = int(params["num_samples"])
        sigma = params["stdev"] if "stdev" in params else params["noise_level"] * float(ctx.x.max() - ctx.x.min())
        seeds = ctx.rng.integers(0, 2**31 - 1, size=n, dtype=np.int64)
        exported = ctx.model.white_box.exported if ctx.model.white_box else None
        variant = g.Gradient(score=ctx.score, path=g.PATH_NOISE, layer=str(params["layer"]), exported=exported)
        constants = {**ctx.target_constants(), "x0": x, "sigma": np.array(sigma, np.float32)}
        powers = yield Stage(variant, constants, row_chunks({"noise_seed": seeds}, 256), n, GradientPowers())
        d1, d2, d3 = (s / n for s in powers.sums)
        weights = smooth_plus_plus_weights(activation, d1, d2, d3)
        return LayerMap(weighted_map(weights, activation, bool(params["eigen_smooth"])))
