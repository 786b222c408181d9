"""Occlusion prefixes: replace a window of the input (images) or one feature (tabular) by a baseline.

Row codes are tiny: an image row is the window (y0, x0, y1, x1) with exclusive ends, so (0, 0, 0, 0)
is the unoccluded input; a tabular row is a feature index, -1 for none. The perturbed batch is built
in the graph, where the model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..noise import gaussian_noise, uniform_noise
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register, scored_model


def image_prefix(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str, random_fill: str = "") -> str:
    """Inputs window [R, 4] int64 and fill [J] float32; returns the perturbed batch [R, ...]. With
    `random_fill` (uniform | gaussian) the window takes fill + fill_scale * noise, the noise made in
    the graph from the row's noise_seed [R] (fill_scale [J])."""
    height, width = sig.spatial_shape
    window = b.input("window", TensorProto.INT64, ["rows", 4])
    fill = b.input("fill", TensorProto.FLOAT, ["jobs"])

    def inside(start: int, stop: int, size: int) -> str:
        """[R, size] bool: start <= i < stop for each row's interval along one axis."""
        positions = b.const(np.arange(size, dtype=np.int64), "positions")
        lo = b.unsqueeze(b.op("Gather", [window, b.const(np.array(start, np.int64))], axis=1), [1])
        hi = b.unsqueeze(b.op("Gather", [window, b.const(np.array(stop, np.int64))], axis=1), [1])
        at_or_after = b.op("Not", [b.op("Less", [positions, lo])])
        return b.op("And", [at_or_after, b.op("Less", [positions, hi])])

    rows_in = b.unsqueeze(inside(0, 2, height), [2])  # [R, H, 1]
    cols_in = b.unsqueeze(inside(1, 3, width), [1])   # [R, 1, W]
    covered = b.unsqueeze(b.op("And", [rows_in, cols_in]), [sig.channel_axis])
    per_row = b.const(np.array([-1, 1, 1, 1], np.int64))
    row_fill = b.op("Reshape", [b.op("Gather", [fill, job_index], axis=0), per_row])
    if random_fill:
        size = int(np.prod(sig.example_shape))
        seeds = b.input("noise_seed", TensorProto.INT64, ["rows"])
        noise = (uniform_noise if random_fill == "uniform" else gaussian_noise)(b, seeds, size)
        noise = b.op("Reshape", [noise, b.const(np.array([-1, *sig.example_shape], np.int64))])
        scale = b.op("Reshape", [b.op("Gather", [b.input("fill_scale", TensorProto.FLOAT, ["jobs"]), job_index],
                                          axis=0), per_row])
        row_fill = b.op("Add", [row_fill, b.op("Mul", [scale, noise])])
    return b.op("Where", [covered, row_fill, b.job_rows(x0, job_index)])


def tabular_prefix(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str) -> str:
    """Inputs feature [R] int64 and fill [J, F] float32; returns the perturbed batch [R, F]."""
    (num_features,) = sig.example_shape
    feature = b.input("feature", TensorProto.INT64, ["rows"])
    fill = b.input("fill", TensorProto.FLOAT, ["jobs", num_features])
    positions = b.const(np.arange(num_features, dtype=np.int64), "features")
    replaced = b.op("Equal", [b.unsqueeze(feature, [1]), positions])
    x = b.op("Gather", [x0, job_index], axis=0)
    return b.op("Where", [replaced, b.op("Gather", [fill, job_index], axis=0), x])


@register
@dataclass(frozen=True)
class ImageOcclusion(VariantSpec):
    """Rows: window [4] (y0, x0, y1, x1); constants x0, target, fill. `random_fill` (uniform | gaussian):
    rows also carry noise_seed, constants fill_scale (a random patch per window, Zhou et al. 2014)."""

    kind = "occlusion_image"
    score: str = "probability"
    random_fill: str = ""

    def interface(self) -> VariantInterface:
        if self.random_fill:
            return VariantInterface(("x0", "target", "fill", "fill_scale"), ("window", "noise_seed"), (SCORE_OUTPUT,))
        return VariantInterface(("x0", "target", "fill"), ("window",), (SCORE_OUTPUT,))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        def prefix(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str) -> str:
            return image_prefix(b, sig, x0, job_index, self.random_fill)
        return scored_model(model, sig, self.describe(), self.score, prefix)


@register
@dataclass(frozen=True)
class TabularOcclusion(VariantSpec):
    """Rows: feature (-1: none); constants x0, target, fill [F]."""

    kind = "occlusion_tabular"
    score: str = "probability"

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target", "fill"), ("feature",), (SCORE_OUTPUT,))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        return scored_model(model, sig, self.describe(), self.score, tabular_prefix)
