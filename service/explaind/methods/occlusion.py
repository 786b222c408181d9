"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", 2014).

Follows Captum's `Occlusion`: a window covering all channels slides over the image with a stride
(positions 0, s, 2s, ... while the window fits); the covered values are replaced by the baseline; a
pixel's attribution is the mean, over the windows covering it, of f_c(x) - f_c(x_occluded), computed
as f_c(x) - mean(f_c(x_occluded)) from running sums. Pixels no window covers get 0.
Defaults: window 8x8, stride 4, baseline 0 in model input space, score = probability.
Random fill (Zhou et al. 2014, "Object Detectors Emerge in Deep Scene CNNs": occluders of random
pixel values): `fill` uniform or gaussian gives each window its own random patch, uniform in
[min(x), max(x)] or N(mean(x), std(x)^2) per value, made in the graph from one seed per window drawn
from the request's seed (`baseline` is then unused).
Tabular: one feature at a time is replaced by its baseline (default the background mean):
attribution_i = f_c(x) - f_c(x with feature i replaced).
The job's first row is the unoccluded input, so f_c(x) comes from the same graph as the others.
Windows go coarse to fine (those on a grid of every 2^k-th position first, largest k first, then the
finer grids; the map does not depend on the order), so any prefix of them spreads over the image.
Partial answer at the deadline (allow_partial): the same definition over the windows evaluated so far
(a pixel no evaluated window covers gets 0); with the default window and stride the first quarter of
the windows (every other position both ways) tiles nearly all of the image. Tabular: features not yet
evaluated get 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Settings
from ..errors import FailedPrecondition, InvalidArgument
from ..onnxgraph.variants import SCORE_OUTPUT
from ..onnxgraph.variants.occlusion import ImageOcclusion, TabularOcclusion
from .base import Method, MethodContext, ModelView, Reducer, Result, Stage, Stages, chunked
from .params import IMAGE, Choice, Float, Ints

FILLS = ("baseline", "uniform", "gaussian")

CHUNK_ROWS = 1024


def window_positions(size: int, window: int, stride: int) -> np.ndarray:
    return np.arange(0, size - window + 1, stride, dtype=np.int64)


def coarse_to_fine(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Window grid indices (iy, ix), ordered so that every prefix spreads over the image: the windows
    whose indices are both multiples of 2^k come at level k, highest level first, raster order within."""
    iy, ix = (a.ravel() for a in np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"))
    level = np.minimum(_trailing_zeros(iy), _trailing_zeros(ix))
    order = np.lexsort((ix, iy, -level))
    return iy[order], ix[order]


def _trailing_zeros(values: np.ndarray) -> np.ndarray:
    """The exponent of the largest power of two dividing each value (0 counts as divisible by all)."""
    lowest = values & -values
    return np.where(values == 0, 64, np.log2(np.maximum(lowest, 1)).astype(np.int64))


class ImageOcclusionReducer(Reducer):
    def __init__(self, height: int, width: int) -> None:
        self.base = 0.0
        self.score_sum = np.zeros((height, width), np.float64)
        self.count = np.zeros((height, width), np.float64)
        self.has_base = False
        self.windows = 0

    def consume(self, codes, rows, slot) -> None:
        for (y0, x0, y1, x1), score in zip(codes["window"], rows[SCORE_OUTPUT].astype(np.float64)):
            if y1 == y0:  # the unoccluded row
                self.base = score
                self.has_base = True
            else:
                self.score_sum[y0:y1, x0:x1] += score
                self.count[y0:y1, x0:x1] += 1
                self.windows += 1

    def partial_unavailable(self) -> str:
        return "" if self.has_base and self.windows else "no occluded window was evaluated"

    def attribution(self) -> np.ndarray:
        covered = self.count > 0
        mean = np.divide(self.score_sum, self.count, out=np.zeros_like(self.score_sum), where=covered)
        return np.where(covered, self.base - mean, 0.0)


class TabularOcclusionReducer(Reducer):
    def __init__(self, num_features: int) -> None:
        self.base = 0.0
        self.scores = np.zeros(num_features, np.float64)
        self.seen = np.zeros(num_features, bool)
        self.has_base = False

    def consume(self, codes, rows, slot) -> None:
        for feature, score in zip(codes["feature"], rows[SCORE_OUTPUT].astype(np.float64)):
            if feature < 0:
                self.base = score
                self.has_base = True
            else:
                self.scores[feature] = score
                self.seen[feature] = True

    def partial_unavailable(self) -> str:
        return "" if self.has_base and self.seen.any() else "no feature was replaced"

    def attribution(self) -> np.ndarray:
        return np.where(self.seen, self.base - self.scores, 0.0)


def pair(values: list[int]) -> tuple[int, int]:
    """[a, b] or [a] (meaning [a, a])."""
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


class Occlusion(Method):
    name = "occlusion"
    title = "Occlusion"
    reference = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks; Captum Occlusion"
    description = ("Slide a window over the input, replace it by a baseline and record the drop of the "
                   "target score; tabular: one feature at a time.")
    kinds = frozenset({"image", "tabular"})
    partial_results = ("the windows evaluated so far (coarse to fine, spread over the image); pixels no "
                       "evaluated window covers get 0; tabular: features not yet replaced get 0; at least "
                       "the unoccluded input and one window")
    params = (
        Ints("window", [8, 8], "images: window [height, width] or [side]", 1, kinds=IMAGE, length=(1, 2), neutral=([1], [1, 1])),
        Ints("stride", [4, 4], "images: stride [y, x] or [step]", 1, kinds=IMAGE, length=(1, 2), neutral=([1], [1, 1])),
        Float("baseline", None, "value replacing the occluded input, in model input space",
              shown="0 (images), the background mean (tabular)"),
        Choice("fill", "baseline", FILLS, "images: baseline | uniform | gaussian (a seeded random patch per window)",
               kinds=IMAGE, neutral=("baseline",)),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        if model.kind == "tabular":
            if "baseline" not in params and model.background is None:
                raise FailedPrecondition("occlusion on a tabular model needs background rows in model.yaml "
                                         "(`background:`) or an explicit occlusion.baseline")
            params.setdefault("baseline", "background mean")
            return params
        window, stride = pair(params["window"]), pair(params["stride"])
        height, width = model.signature.spatial_shape
        if window[0] > height or window[1] > width:
            raise InvalidArgument("occlusion.window", f"at most the input's size [{height}, {width}]", list(window))
        rows = 1 + len(window_positions(height, window[0], stride[0])) * len(window_positions(width, window[1], stride[1]))
        if rows > settings.max_rows_per_request:
            raise InvalidArgument("occlusion.stride", f"a stride giving at most {settings.max_rows_per_request} "
                                  f"windows (the server's max_rows_per_request)", f"{list(stride)} ({rows} windows)")
        if params["fill"] != "baseline" and "baseline" in params:
            raise InvalidArgument("occlusion.baseline", f"unset with fill {params['fill']} (the patches are random)",
                                  params["baseline"])
        used: dict[str, Any] = {"window": list(window), "stride": list(stride)}
        if params["fill"] == "baseline":  # (reported only when random: the map is the baseline's otherwise)
            used["baseline"] = params.get("baseline", 0.0)
        else:
            used["fill"] = params["fill"]
        return used

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        """The unoccluded input and one row per window (images) or per feature (tabular)."""
        if ctx.model.kind == "tabular":
            return 1 + int(ctx.model.signature.example_shape[0])
        height, width = ctx.model.signature.spatial_shape
        (wh, ww), (sy, sx) = params["window"], params["stride"]
        return 1 + len(window_positions(height, wh, sy)) * len(window_positions(width, ww, sx))

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        constants = ctx.target_constants()
        if ctx.model.kind == "tabular":
            num_features = ctx.x.shape[0]
            if isinstance(params["baseline"], float):
                constants["fill"] = np.full(num_features, params["baseline"], np.float32)
            else:
                constants["fill"] = np.asarray(ctx.model.background, np.float64).mean(axis=0).astype(np.float32)
            features = np.arange(-1, num_features, dtype=np.int64)
            tabular = yield Stage(TabularOcclusion(score=ctx.score), constants, iter([{"feature": features}]),
                                  len(features), TabularOcclusionReducer(num_features), partial=True)
            return Result(tabular.attribution())
        height, width = ctx.model.signature.spatial_shape
        (wh, ww), (sy, sx) = params["window"], params["stride"]
        ys, xs = window_positions(height, wh, sy), window_positions(width, ww, sx)
        iy, ix = coarse_to_fine(len(ys), len(xs))
        y0, x0 = ys[iy], xs[ix]
        windows = np.concatenate([np.zeros((1, 4), np.int64), np.stack([y0, x0, y0 + wh, x0 + ww], axis=1)])
        fill = params.get("fill", "baseline")
        if fill == "baseline":
            constants["fill"] = np.array(params["baseline"], np.float32)
            rows = chunked(len(windows), CHUNK_ROWS, lambda start, n: {"window": windows[start : start + n]})
        else:
            x = ctx.x.astype(np.float64)
            low, scale = (x.min(), x.max() - x.min()) if fill == "uniform" else (x.mean(), x.std())
            constants["fill"] = np.array(low, np.float32)
            constants["fill_scale"] = np.array(scale, np.float32)
            seeds = ctx.rng.integers(0, 2**31 - 1, size=len(windows), dtype=np.int64)
            rows = chunked(len(windows), CHUNK_ROWS, lambda start, n: {"window": windows[start : start + n],
                                                                       "noise_seed": seeds[start : start + n]})
        variant = ImageOcclusion(score=ctx.score, random_fill="" if fill == "baseline" else fill)
        image = yield Stage(variant, constants, rows, len(windows), ImageOcclusionReducer(height, width), partial=True)
        return Result(image.attribution())
