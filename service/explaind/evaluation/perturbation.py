"""What the second-wave faithfulness metrics share (pixel flipping, IROF, ROAD, faithfulness
correlation, sensitivity-n, infidelity): Quantus's baselines, the input seen as [C, P] (channels by
pixels, or one channel of F features), and stages of masked rows.

A *pixel* of an image model is all its channels at one position, as explaind's attributions are per
pixel ([H, W]); a tabular model's features are its pixels, one channel. Quantus broadcasts an [H, W]
map over the channels and counts C * H * W features instead; where that changes a figure the
metric's docstring says so.

Baselines (Quantus's `perturb_baseline` names, computed on the whole input, every channel):
black = the input's minimum, white = its maximum, mean = its mean, zero = 0. Quantus recomputes the
baseline on the input as it stands before each step of a cumulative removal (pixel flipping, IROF,
infidelity); black and white do not move under it, mean does: `cumulative_fill` gives every pixel
the value its own step replaces it with, so the whole curve is one ranked stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..methods.base import Reducer, Stage, chunked
from ..onnxgraph.variants import SCORE_OUTPUT, coalition, segments
from .base import MetricContext
from .curves import CHUNK_ROWS

BLACK, WHITE, MEAN, ZERO = "black", "white", "mean", "zero"
BASELINES = (BLACK, WHITE, MEAN, ZERO)
BASELINE_TEXT = "black: the input's minimum; white: its maximum; mean: its mean; zero"


def channels_pixels(ctx: MetricContext) -> np.ndarray:
    """The input as float64 [C, P] (images: channels by row-major pixels; tabular: [1, F])."""
    x = np.asarray(ctx.x, np.float64)
    if ctx.model.kind != "image":
        return x.reshape(1, -1)
    if ctx.model.signature.layout == "NHWC":
        x = np.moveaxis(x, 2, 0)
    return x.reshape(x.shape[0], -1)


def model_input(ctx: MetricContext, cp: np.ndarray) -> np.ndarray:
    """[C, P] back to the model's input shape and layout, float32."""
    shape = tuple(ctx.model.signature.example_shape)
    if ctx.model.kind != "image":
        return cp.reshape(shape).astype(np.float32)
    if ctx.model.signature.layout == "NHWC":
        height, width, channels = shape
        return np.moveaxis(cp.reshape(channels, height, width), 0, 2).astype(np.float32)
    return cp.reshape(shape).astype(np.float32)


def baseline_value(cp: np.ndarray, baseline: str) -> float:
    """Quantus's baseline of an input (all channels together)."""
    if baseline == BLACK:
        return float(cp.min())
    if baseline == WHITE:
        return float(cp.max())
    if baseline == MEAN:
        return float(cp.mean())
    return 0.0


def cumulative_fill(cp: np.ndarray, rank: np.ndarray, groups: int, baseline: str) -> np.ndarray:
    """[C, P]: what each pixel shows once removed, when the groups of pixels (rank[p] = its group,
    removed in order 0, 1, ...) are replaced one after the other by the baseline of the input as it
    stands before that group's step (Quantus's cumulative perturbation)."""
    if baseline != MEAN:
        return np.full_like(cp, baseline_value(cp, baseline))
    channels, pixels = cp.shape
    group_sums = np.bincount(rank, weights=cp.sum(axis=0), minlength=groups)
    group_sizes = np.bincount(rank, minlength=groups) * channels
    total, count = float(cp.sum()), cp.size
    means = np.empty(groups)
    for k in range(groups):
        means[k] = total / count
        total += group_sizes[k] * means[k] - group_sums[k]
    return np.broadcast_to(means[rank], (channels, pixels)).copy()


class ScoresReducer(Reducer):
    """The target score of every row, in row order."""

    def __init__(self, rows: int) -> None:
        self.scores = np.zeros(rows, np.float64)

    def consume(self, codes, rows, slot) -> None:
        self.scores[codes["row"]] = rows[SCORE_OUTPUT].astype(np.float64)


class SubsetReducer(ScoresReducer):
    """The score of every row, and the attribution summed over each row's removed subset."""

    def __init__(self, rows: int) -> None:
        super().__init__(rows)
        self.sums = np.zeros(rows, np.float64)


def subset_stage(ctx: MetricContext, sizes: np.ndarray, fill: np.ndarray) -> Stage[SubsetReducer]:
    """Row r removes sizes[r] pixels (features) drawn uniformly without replacement from ctx.rng (in
    row order, whatever the batching), showing `fill` (model input shape) there and the input
    elsewhere. The rows are built in the graph from one bit per pixel (images: the superpixel prefix
    with every pixel its own segment; tabular: the coalition prefix over a single background row,
    the fill), drawn lazily chunk by chunk (a 224 x 224 input's bits are 200 KB a row)."""
    rows, pixels = len(sizes), int(ctx.attribution.size)
    attribution = ctx.attribution.reshape(-1)
    reducer = SubsetReducer(rows)
    image = ctx.model.kind == "image"
    width = -(-pixels // 32) * 32 if image else pixels
    chunk = max(1, min(CHUNK_ROWS, (8 << 20) // (4 * width)))
    rng = ctx.rng

    def draw(start: int, n: int) -> dict[str, np.ndarray]:
        keep = np.zeros((n, width), np.float32)
        keep[:, :pixels] = 1.0
        for i in range(n):
            subset = rng.choice(pixels, int(sizes[start + i]), replace=False)
            keep[i, subset] = 0.0
            reducer.sums[start + i] = attribution[subset].sum()
        return {"row": np.arange(start, start + n, dtype=np.int64), ("coalition" if image else "mask"): keep}

    constants: dict[str, Any] = ctx.explain.target_constants()
    if image:
        variant: Any = segments.Segments(score=ctx.explain.score, width=width)
        constants.update(segments=np.arange(pixels, dtype=np.int64), fill_image=np.asarray(fill, np.float32))
    else:
        variant = coalition.TabularCoalition(score=ctx.explain.score, background_rows=1)
        constants.update(background=np.asarray(fill, np.float32).reshape(1, -1),
                         background_weights=np.ones(1, np.float32))
    return Stage(variant, constants, chunked(rows, chunk, draw), rows, reducer)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation (NaN when either side is constant, as scipy's pearsonr)."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if denominator == 0.0 or not np.isfinite(denominator):
        return float("nan")
    return float(np.clip((a * b).sum() / denominator, -1.0, 1.0))

