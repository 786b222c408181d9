"""What LIME and Kernel SHAP share on images: superpixels as players, a fill image, coalition rows.

The segmentation runs once per request on the input seen as pixels; the segment map and the fill
image (what an absent superpixel shows) go to the graph as per-job constants, and each coalition
travels as a row of on/off bits padded to a multiple of 32 (so requests with similar segment counts
share one graph variant). The engine's superpixel prefix (onnxgraph/segments.py) does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from ..engine.job import RowChunk
from ..models.inputs import display_image
from ..onnxgraph.variants.segments import Segments
from .base import MethodContext
from .lime_core import segment

WIDTH_STEP = 32
SEGMENTATIONS = ("quickshift", "slic", "felzenszwalb")


def segment_means(hwc: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[H, W, C]: every pixel replaced by its superpixel's mean (lime's hide_color=None)."""
    count = int(labels.max()) + 1
    flat = hwc.reshape(-1, hwc.shape[2]).astype(np.float64)
    sizes = np.bincount(labels.ravel(), minlength=count)
    means = np.stack([np.bincount(labels.ravel(), flat[:, c], minlength=count) for c in range(flat.shape[1])],
                     axis=1) / np.maximum(sizes, 1)[:, None]
    return means[labels].astype(np.float32)


@dataclass
class Superpixels:
    labels: np.ndarray   # [H, W] segment of each pixel, 0..count-1
    count: int
    hwc: np.ndarray      # the example as [H, W, C] (model input space)
    layout: str

    @property
    def width(self) -> int:
        return -(-self.count // WIDTH_STEP) * WIDTH_STEP

    def variant(self, score: str) -> Segments:
        return Segments(score=score, width=self.width)

    def constants(self, ctx: MethodContext, fill_hwc: np.ndarray) -> dict[str, np.ndarray]:
        fill = fill_hwc.transpose(2, 0, 1) if self.layout == "NCHW" else fill_hwc
        return {**ctx.target_constants(),
                "segments": self.labels.reshape(-1).astype(np.int64), "fill_image": np.ascontiguousarray(fill)}

    def rows(self, coalitions: Iterable[np.ndarray]) -> Iterator[RowChunk]:
        """Chunks of {"row": ids, "coalition": bits padded to the variant's width}, one per chunk of
        coalition rows (bool [n, count]) as they come: a lazy source is drawn only as the engine takes rows."""
        start = 0
        for chunk in coalitions:
            n = len(chunk)
            padded = np.zeros((n, self.width), np.float32)
            padded[:, :self.count] = chunk
            yield {"row": np.arange(start, start + n, dtype=np.int64), "coalition": padded}
            start += n


def superpixels(ctx: MethodContext, algorithm: str) -> Superpixels:
    """The input's superpixels by `algorithm`, segmented once per request (ctx.memo): Kernel SHAP's
    planned rows need their count before the stage that uses them."""
    key = f"superpixels:{algorithm}"
    if key not in ctx.memo:
        ctx.memo[key] = _segmented(ctx, algorithm)
    return ctx.memo[key]


def _segmented(ctx: MethodContext, algorithm: str) -> Superpixels:
    sig = ctx.model.signature
    labels = segment(display_image(ctx.x, ctx.model.preprocess, sig.layout), algorithm)
    hwc = ctx.x.transpose(1, 2, 0) if sig.layout == "NCHW" else ctx.x
    return Superpixels(labels, int(labels.max()) + 1, hwc, sig.layout)


