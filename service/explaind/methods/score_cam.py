"""Score-CAM (Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for CNNs";
pytorch-grad-cam `ScoreCAM` semantics).

Stage 1: the layer's activation A [K, h, w] for the input. Stage 2: one row per channel k, the input
masked by A_k upsampled bilinearly to the input's size with the corners aligned (pytorch-grad-cam's
`nn.UpsamplingBilinear2d`) and min-max normalised, (u - min u) / (max u - min u + 1e-8); the masks
are made in the graph from the per-job activation (`onnxgraph/variants/channel_masks.py`), so the
host sends one integer per row. w = softmax over channels of the target scores of the masked
inputs; map = ReLU(sum_k w_k A_k) (relu true, as pytorch-grad-cam), upsampled bilinearly with
half-pixel centres as the other CAMs (or left at the layer's size). Unlike pytorch-grad-cam the map
is not min-max scaled (the renderer normalises for display). Score: the logit by default (its
ClassifierOutputTarget). Cost: K model evaluations besides the prediction (which reads the layer),
known before the input is seen from the layer's inferred shape (planned_rows: shape inference on the
model's concrete input shape where the graph leaves K symbolic, models/white_box.py; None only when
even that cannot say). Forward passes only.
eigen_smooth and aug_smooth as every CAM (methods/cam_base.py; aug_smooth: the layer of each augmented
input from a prediction row, then its K masked rows). The response's `arrays` holds channel_weights [K]
(of the unaugmented input).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.job import RowChunk
from ..onnxgraph.variants import SCORE_OUTPUT
from ..onnxgraph.variants.channel_masks import ChannelMasks
from .base import LAYER_ACTIVATIONS, MethodContext, Reducer, Stage, chunked
from .cam_base import BaseCam, LayerMap, MapStages, weighted_map

CHUNK_ROWS = 256


class ChannelScores(Reducer):
    def __init__(self, channels: int) -> None:
        self.scores = np.zeros(channels, np.float64)

    def consume(self, codes: RowChunk, rows: dict[str, np.ndarray], slot: dict[str, np.ndarray]) -> None:
        self.scores[codes["channel"]] = rows[SCORE_OUTPUT]


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


class ScoreCam(BaseCam):
    name = "score_cam"
    title = "Score-CAM"
    reference = "Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for CNNs; pytorch-grad-cam ScoreCAM"
    description = "A layer's channels weighted by the softmax of the scores of the input masked by each of them."
    needs = LAYER_ACTIVATIONS
    arrays = ("channel_weights",)
    reads_prediction_layer = True

    def map_rows(self, params: dict[str, Any], ctx: MethodContext) -> int | None:
        """One masked input per channel of the layer, when the graph's shapes say how many."""
        white_box = ctx.model.white_box
        return white_box.channels_of(str(params["layer"])) if white_box is not None else None

    def layer_map(self, x: np.ndarray, params: dict[str, Any], ctx: MethodContext) -> MapStages:
        activation = yield from self.activation(x, params, ctx)                     # [K, h, w]
        channels, h, w = activation.shape
        channel_ids = np.arange(channels, dtype=np.int64)
        rows = chunked(channels, CHUNK_ROWS, lambda start, n: {"channel": channel_ids[start:start + n]})
        scored = yield Stage(ChannelMasks(score=ctx.score, layer_height=h, layer_width=w),
                             {**ctx.target_constants(), "x0": x, "activation": activation}, rows, channels,
                             ChannelScores(channels))
        weights = softmax(scored.scores)
        return LayerMap(weighted_map(weights, activation, bool(params["eigen_smooth"])),
                        {"channel_weights": weights.astype(np.float32)})
