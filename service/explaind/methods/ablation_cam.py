"""Ablation-CAM (Desai & Ramaswamy 2020, "Ablation-CAM: Visual Explanations for Deep Convolutional
Network via Gradient-free Localization"; pytorch-grad-cam `AblationCAM` semantics).

The layer's activation A [K, h, w] comes with the prediction. Then K + 1 batched rows through the
model's tail after the layer (`onnxgraph/variants/channel_ablation.py`): row k has channel k of the
layer set to the ablation value (0 when min A = 0, else min A - 1e7, as pytorch-grad-cam's
AblationLayer gives the first row of each of its batches), one row ablates nothing. With y the
unablated target score and y_k the score with channel k ablated, w_k = (y - y_k) / y;
map = ReLU(sum_k w_k A_k), upsampled bilinearly (half-pixel centres) or left at the layer's size.
Score: the logit by default (its ClassifierOutputTarget). Forward passes only; all channels are
ablated (pytorch-grad-cam's ratio_channels_to_ablate = 1). eigen_smooth and aug_smooth as every CAM
(methods/cam_base.py). The response's `arrays` holds channel_weights [K] (of the unaugmented input).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.job import RowChunk
from ..onnxgraph.variants import SCORE_OUTPUT
from ..onnxgraph.variants.channel_ablation import ChannelAblation
from .base import LAYER_ACTIVATIONS, MethodContext, Reducer, Stage, chunked
from .cam_base import BaseCam, LayerMap, MapStages, weighted_map

CHUNK_ROWS = 256
ABLATION_OFFSET = 1e7  # pytorch-grad-cam AblationLayer's, below the minimum of a layer that is not >= 0


class AblatedScores(Reducer):
    """scores[k + 1]: the target score with channel k ablated; scores[0] with none."""

    def __init__(self, channels: int) -> None:
        self.scores = np.zeros(channels + 1, np.float64)

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        self.scores[codes["channel"] + 1] = rows[SCORE_OUTPUT]


def ablation_value(activation: np.ndarray) -> float:
    """0 for a layer whose minimum is 0 (after a ReLU), else min - 1e7 (pytorch-grad-cam)."""
    low = float(activation.min())
    return 0.0 if low == 0.0 else low - ABLATION_OFFSET


def ablation_weights(scores: np.ndarray) -> np.ndarray:
    """(y - y_k) / y from [y, y_0, ..., y_{K-1}] (pytorch-grad-cam: a zero y gives non-finite weights)."""
    return (scores[0] - scores[1:]) / scores[0]


class AblationCam(BaseCam):
    name = "ablation_cam"
    title = "Ablation-CAM"
    reference = "Desai & Ramaswamy 2020, Ablation-CAM; pytorch-grad-cam AblationCAM"
    description = "A layer's channels weighted by the relative drop of the score when each is ablated."
    needs = LAYER_ACTIVATIONS
    arrays = ("channel_weights",)
    reads_prediction_layer = True

    def map_rows(self, params: dict[str, Any], ctx: MethodContext) -> int | None:
        """One row per channel of the layer and the unablated row, when the graph's shapes say how many."""
        white_box = ctx.model.white_box
        channels = white_box.channels_of(str(params["layer"])) if white_box is not None else None
        return None if channels is None else channels + 1

    def layer_map(self, x: np.ndarray, params: dict[str, Any], ctx: MethodContext) -> MapStages:
        activation = yield from self.activation(x, params, ctx)                     # [K, h, w]
        channels, h, w = activation.shape
        ids = np.arange(-1, channels, dtype=np.int64)
        rows = chunked(channels + 1, CHUNK_ROWS, lambda start, n: {"channel": ids[start:start + n]})
        constants = {**ctx.target_constants(), "x0": x, "activation": activation,
                     "ablation_value": np.array(ablation_value(activation), np.float32)}
        variant = ChannelAblation(score=ctx.score, layer=str(params["layer"]), layer_height=h, layer_width=w)
        scored = yield Stage(variant, constants, rows, channels + 1, AblatedScores(channels))
        weights = ablation_weights(scored.scores)
        return LayerMap(weighted_map(weights, activation, bool(params["eigen_smooth"])),
                        {"channel_weights": weights.astype(np.float32)})
