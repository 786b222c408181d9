"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018).

saliency = sum_i f_c(x * m_i + baseline * (1 - m_i)) m_i / (N p), with N masks m_i made from
random s x s binary grids (each cell kept with probability p) upsampled bilinearly to
(s + 1) * ceil(size / s) and cropped at a random shift in [0, cell) per axis (TorchRay / the
reference code eclique/RISE; the upsampling uses torch's align_corners=False convention).
Defaults: N = 4000, s = 7, p = 0.5, baseline 0 in model input space, score = probability.
Masks are built in the graph from the grid and shift codes, and each batch's sum of score-weighted
masks is reduced in the graph too, so host memory and transfers stay small whatever N is.
Partial maps, and the partial answer at the deadline (allow_partial), divide the running sum by
the masks evaluated so far instead of N: RISE over those masks (the first ones drawn from the seed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..onnxgraph.variants import rise
from .base import Method, MethodContext, Reducer, Result, Stage, Stages, chunked
from .params import Float, Int

CHUNK_ROWS = 256


class RiseReducer(Reducer):
    def __init__(self, height: int, width: int, keep_probability: float) -> None:
        self.shape = (height, width)
        self.keep_probability = keep_probability
        self.weighted = np.zeros(height * width, np.float64)
        self.masks = 0

    def consume(self, codes, rows, slot) -> None:
        np.add(self.weighted, slot[rise.MASK_SUM_OUTPUT], out=self.weighted)
        self.masks += len(codes["grid"])

    def preview(self) -> np.ndarray:
        return self.attribution()

    def partial_unavailable(self) -> str:
        return "" if self.masks else "no mask was evaluated"

    def attribution(self) -> np.ndarray:
        return (self.weighted / (max(self.masks, 1) * self.keep_probability)).reshape(self.shape)


class Rise(Method):
    name = "rise"
    title = "RISE"
    reference = "Petsiuk, Das & Saenko 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models"
    description = ("Average of random smooth masks weighted by the target score of the masked input; "
                   "images only.")
    kinds = frozenset({"image"})
    # RISE saliency is an expected score, positive everywhere: its minimum, not 0, is "no evidence".
    render_low_percentile = 0.0
    partial_results = ("RISE over the masks evaluated so far (the first ones drawn from the seed): their "
                       "score-weighted sum over their number times p; at least one mask")
    params = (
        Int("num_masks", 4000, "number of random masks N", 1,
            lambda lim: min(lim.settings.max_num_masks, lim.settings.max_rows_per_request)),
        Int("grid_size", 7, "cells per side s of the random grid", 1, lambda lim: min(lim.model.signature.spatial_shape)),
        Float("keep_probability", 0.5, "probability p that a cell is kept", 0.0, 1.0, exclusive_low=True,
              exclusive_high=True),
        Float("baseline", 0.0, "value replacing the masked input, in model input space"),
    )

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return params["num_masks"]

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        height, width = ctx.model.signature.spatial_shape
        s, p, n = params["grid_size"], params["keep_probability"], params["num_masks"]
        cells = np.array([rise.cell_size(height, s), rise.cell_size(width, s)], np.int64)
        rng = ctx.rng

        def draw(start: int, count: int) -> dict[str, np.ndarray]:
            grid = (rng.random((count, s, s)) < p).astype(np.float32)
            shift = rng.integers(0, cells, size=(count, 2), dtype=np.int64)
            return {"grid": grid, "shift": shift}

        constants = ctx.target_constants()
        zero = params["baseline"] == 0.0
        if not zero:
            constants["fill"] = np.array(params["baseline"], np.float32)
        reducer = yield Stage(rise.Rise(score=ctx.score, grid_size=s, zero_baseline=zero), constants,
                              chunked(n, CHUNK_ROWS, draw), n, RiseReducer(height, width, p), partial_maps=True,
                              partial=True)
        return Result(reducer.attribution())
