"""What the perturbation-curve metrics share (deletion, insertion, pixel flipping, IROF): an order of
the pixels or features from the attribution, a substrate, and one engine stage of ranked rows.

Row i of a curve replaces the first min(i * step, P) positions of the order (P pixels or features),
i = 0 .. ceil(P / step): the input itself first, the substrate last. The rows are built in the graph
(onnxgraph/variants/ranked.py) from one integer each; the scores come back in row order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FailedPrecondition
from ..methods.base import Reducer, Stage, row_chunks
from ..onnxgraph.variants import SCORE_OUTPUT, ranked
from .base import MetricContext

CHUNK_ROWS = 256
MORF, LERF = "morf", "lerf"
ZERO, BLUR, MEAN = "zero", "blur", "mean"
# Petsiuk et al.'s insertion substrate (their code's gkern(11, 5)): a Gaussian of sigma 5 truncated
# to an 11 x 11 kernel, applied per channel with zero padding.
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0


def order(attribution: np.ndarray, direction: str) -> np.ndarray:
    """Positions (flattened, row-major) most relevant first (MoRF) or least relevant first (LeRF);
    ties keep position order (a stable sort)."""
    flat = np.asarray(attribution, np.float64).reshape(-1)
    return np.argsort(-flat if direction == MORF else flat, kind="stable")


def ranks_of(positions: np.ndarray) -> np.ndarray:
    """rank[p] = where position p comes in `positions` (0: replaced first)."""
    rank = np.empty(len(positions), np.int64)
    rank[positions] = np.arange(len(positions), dtype=np.int64)
    return rank


def blur_kernel() -> np.ndarray:
    delta = np.zeros((BLUR_KERNEL, BLUR_KERNEL))
    delta[BLUR_KERNEL // 2, BLUR_KERNEL // 2] = 1.0
    from scipy import ndimage  # lazy: scipy is not imported by the server until a request needs it
    return ndimage.gaussian_filter(delta, BLUR_SIGMA)


def substrate(ctx: MetricContext, kind: str, metric: str) -> np.ndarray:
    """What a replaced pixel or feature shows, in model input space: zero; the input blurred (images,
    per channel); the input's mean (images: per channel; tabular: the background's per-feature mean,
    or the row's mean without a background)."""
    x = np.asarray(ctx.x, np.float32)
    if kind == ZERO:
        return np.zeros_like(x)
    image = ctx.model.kind == "image"
    if kind == BLUR:
        if not image:
            raise FailedPrecondition(f"{metric}.substrate: blur applies to images; for a tabular model use zero or mean")
        kernel = blur_kernel()
        channel_axis = 0 if ctx.model.signature.layout == "NCHW" else 2
        channels = np.moveaxis(x, channel_axis, 0)
        from scipy import ndimage  # lazy: scipy is not imported by the server until a request needs it
        blurred = np.stack([ndimage.convolve(c.astype(np.float64), kernel, mode="constant", cval=0.0) for c in channels])
        return np.moveaxis(blurred, 0, channel_axis).astype(np.float32)
    if image:
        channel_axis = 0 if ctx.model.signature.layout == "NCHW" else 2
        spatial = tuple(a for a in range(3) if a != channel_axis)
        return np.broadcast_to(x.mean(axis=spatial, keepdims=True), x.shape).astype(np.float32)
    background = ctx.model.background
    mean = background.mean(axis=0) if background is not None else np.full_like(x, x.mean())
    return np.asarray(mean, np.float32).reshape(x.shape)


def curve_rows(positions: int, step: int) -> np.ndarray:
    """replaced[i] = min(i * step, P) for i = 0 .. ceil(P / step)."""
    steps = -(-positions // step)
    return np.minimum(np.arange(steps + 1, dtype=np.int64) * step, positions)


class CurveReducer(Reducer):
    """The score of every row, in row order."""

    def __init__(self, rows: int) -> None:
        self.scores = np.zeros(rows, np.float64)

    def consume(self, codes, rows, slot) -> None:
        self.scores[codes["row"]] = rows[SCORE_OUTPUT].astype(np.float64)


def curve_stage(ctx: MetricContext, rank: np.ndarray, replaced: np.ndarray, start: np.ndarray,
                fill: np.ndarray) -> Stage[CurveReducer]:
    """Rows showing `fill` where rank < replaced[i] and `start` elsewhere (deletion: start = the input,
    fill = the substrate; insertion: the other way round)."""
    constants: dict[str, Any] = {"x0": np.asarray(start, np.float32), "target": np.array(ctx.target, np.int64),
                                 "rank": np.asarray(rank, np.int64), "substrate": np.asarray(fill, np.float32)}
    variant = ranked.Ranked(score=ctx.explain.score, image=ctx.model.kind == "image")
    codes = {"replaced": replaced.reshape(-1, 1)}
    return Stage(variant, constants, row_chunks(codes, CHUNK_ROWS), len(replaced), CurveReducer(len(replaced)))


def auc(scores: np.ndarray) -> float:
    """Area under the curve over [0, 1], the steps evenly spaced (Petsiuk et al.'s trapezoid rule):
    (sum - first / 2 - last / 2) / (n - 1)."""
    scores = np.asarray(scores, np.float64)
    if len(scores) < 2:
        return float(scores[0]) if len(scores) else 0.0
    return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1))
