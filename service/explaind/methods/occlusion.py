"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", 2014).

Follows Captum's `Occlusion`: a window covering all channels slides over the image with a stride
(positions 0, s, 2s, ... while the window fits); the covered values are replaced by the baseline; a
pixel's attribution is the mean, over the windows covering it, of f_c(x) - f_c(x_occluded), computed
as f_c(x) - mean(f_c(x_occluded)) from running sums. Pixels no window covers get 0.
Defaults: window 8x8, stride 4, baseline 0 in model input space, score = probability.
Tabular: one feature at a time is replaced by its baseline (default the background mean):
attribution_i = f_c(x) - f_c(x with feature i replaced).
The job's first row is the unoccluded input, so f_c(x) comes from the same graph as the others.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import Settings
from ..errors import FailedPrecondition, InvalidArgument
from ..onnxgraph.variants import OCCLUSION_IMAGE, OCCLUSION_TABULAR, SCORE_OUTPUT, VariantSpec
from .base import Method, MethodContext, ModelView, Parameter, Plan, Reducer, chunked, pair_param

CHUNK_ROWS = 1024


def window_positions(size: int, window: int, stride: int) -> np.ndarray:
    return np.arange(0, size - window + 1, stride, dtype=np.int64)


class ImageOcclusionReducer(Reducer):
    def __init__(self, height: int, width: int) -> None:
        self.base = 0.0
        self.score_sum = np.zeros((height, width), np.float64)
        self.count = np.zeros((height, width), np.float64)

    def consume(self, codes, rows, slot) -> None:
        for (y0, x0, y1, x1), score in zip(codes["window"], rows[SCORE_OUTPUT].astype(np.float64)):
            if y1 == y0:  # the unoccluded row
                self.base = score
            else:
                self.score_sum[y0:y1, x0:x1] += score
                self.count[y0:y1, x0:x1] += 1

    def attribution(self) -> np.ndarray:
        covered = self.count > 0
        mean = np.divide(self.score_sum, self.count, out=np.zeros_like(self.score_sum), where=covered)
        return np.where(covered, self.base - mean, 0.0)


class TabularOcclusionReducer(Reducer):
    def __init__(self, num_features: int) -> None:
        self.base = 0.0
        self.scores = np.zeros(num_features, np.float64)
        self.seen = np.zeros(num_features, bool)

    def consume(self, codes, rows, slot) -> None:
        for feature, score in zip(codes["feature"], rows[SCORE_OUTPUT].astype(np.float64)):
            if feature < 0:
                self.base = score
            else:
                self.scores[feature] = score
                self.seen[feature] = True

    def attribution(self) -> np.ndarray:
        return np.where(self.seen, self.base - self.scores, 0.0)


class Occlusion(Method):
    name = "occlusion"
    title = "Occlusion"
    reference = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks; Captum Occlusion"
    description = ("Slide a window over the input, replace it by a baseline and record the drop of the "
                   "target score; tabular: one feature at a time.")
    kinds = frozenset({"image", "tabular"})
    parameters = (
        Parameter("window", "repeated int32", "[8, 8]", "images: window [height, width] or [side]"),
        Parameter("stride", "repeated int32", "[4, 4]", "images: stride [y, x] or [step]"),
        Parameter("baseline", "float", "0 (images), background mean (tabular)",
                  "value replacing the occluded input, in model input space"),
    )

    def resolve(self, given: Mapping[str, Any], model: ModelView, settings: Settings) -> dict[str, Any]:
        baseline = given.get("baseline")
        if baseline is not None and not np.isfinite(baseline):
            raise InvalidArgument("occlusion.baseline", "a finite number", baseline)
        if model.kind == "tabular":
            for name in ("window", "stride"):
                if name in given and list(given[name]) not in ([1], [1, 1]):
                    raise InvalidArgument(f"occlusion.{name}", "unset or [1] for a tabular model "
                                          "(one feature at a time)", list(given[name]))
            if baseline is None and model.background is None:
                raise FailedPrecondition("occlusion on a tabular model needs background rows in model.yaml "
                                         "(`background:`) or an explicit occlusion.baseline")
            return {"baseline": float(baseline) if baseline is not None else "background mean"}
        window = pair_param(given, "occlusion", "window", (8, 8))
        stride = pair_param(given, "occlusion", "stride", (4, 4))
        height, width = model.signature.spatial_shape
        if window[0] > height or window[1] > width:
            raise InvalidArgument("occlusion.window", f"at most the input's size [{height}, {width}]", list(window))
        rows = 1 + len(window_positions(height, window[0], stride[0])) * len(window_positions(width, window[1], stride[1]))
        if rows > settings.max_rows_per_request:
            raise InvalidArgument("occlusion.stride", f"a stride giving at most {settings.max_rows_per_request} "
                                  f"windows (the server's max_rows_per_request)", f"{list(stride)} ({rows} windows)")
        return {"window": list(window), "stride": list(stride), "baseline": float(baseline or 0.0)}

    def plan(self, params: dict[str, Any], ctx: MethodContext) -> Plan:
        spec_kind = OCCLUSION_TABULAR if ctx.model.kind == "tabular" else OCCLUSION_IMAGE
        spec = VariantSpec(spec_kind, ctx.score)
        constants = {"x0": ctx.x, "target": np.array(ctx.target, np.int64)}
        if ctx.model.kind == "tabular":
            num_features = ctx.x.shape[0]
            if isinstance(params["baseline"], float):
                fill = np.full(num_features, params["baseline"], np.float32)
            else:
                fill = np.asarray(ctx.model.background, np.float64).mean(axis=0).astype(np.float32)
            constants["fill"] = fill
            features = np.arange(-1, num_features, dtype=np.int64)
            return Plan(spec, constants, iter([{"feature": features}]), len(features),
                        TabularOcclusionReducer(num_features))
        height, width = ctx.model.signature.spatial_shape
        (wh, ww), (sy, sx) = params["window"], params["stride"]
        ys, xs = window_positions(height, wh, sy), window_positions(width, ww, sx)
        y0, x0 = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
        windows = np.concatenate([np.zeros((1, 4), np.int64), np.stack([y0, x0, y0 + wh, x0 + ww], axis=1)])
        constants["fill"] = np.array(params["baseline"], np.float32)
        rows = chunked(len(windows), CHUNK_ROWS, lambda start, n: {"window": windows[start : start + n]})
        return Plan(spec, constants, rows, len(windows), ImageOcclusionReducer(height, width))
