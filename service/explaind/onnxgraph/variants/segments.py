"""Superpixel prefix (LIME, image Kernel SHAP): a row is an on/off bit per segment.

Per job: the segment map [H * W] (int64 labels 0..S-1) and the fill image (what a switched-off
segment shows: lime's per-segment mean colour, or a value) in model input space. Per row: the
coalition [S] as 0/1 floats (padded with zeros to the variant's width). The mask is the coalition
looked up at every pixel's label; perturbed = fill + (x - fill) * mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register, scored_model


def prefix(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str, width: int) -> str:
    height, image_width = sig.spatial_shape
    coalition = b.input("coalition", TensorProto.FLOAT, ["rows", width])
    segments = b.input("segments", TensorProto.INT64, ["jobs", height * image_width])
    fill = b.input("fill_image", TensorProto.FLOAT, ["jobs", *sig.example_shape])
    labels = b.op("Gather", [segments, job_index], axis=0)                       # [R, H*W]
    on = b.op("GatherElements", [coalition, labels], axis=1)                     # [R, H*W]
    spatial = [height, image_width]
    shape = [-1, 1, *spatial] if sig.layout == "NCHW" else [-1, *spatial, 1]
    mask = b.op("Reshape", [on, b.const(np.array(shape, np.int64))])
    # (x - fill) once per job, then per row: fill + (x - fill) * mask, without copying per-job tensors
    # to every row when the batch holds one job.
    centred = b.job_rows(b.op("Sub", [x0, fill]), job_index)
    return b.op("Add", [b.job_rows(fill, job_index), b.op("Mul", [centred, mask])])


@register
@dataclass(frozen=True)
class Segments(VariantSpec):
    """Rows: coalition [width] bits; constants x0, target, segments [H * W], fill_image."""

    kind = "segments"
    score: str = "probability"
    width: int = 32

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target", "segments", "fill_image"), ("coalition",), (SCORE_OUTPUT,))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        return scored_model(model, sig, self.describe(), self.score,
                            lambda b, sig, x0, job_index: prefix(b, sig, x0, job_index, self.width))
