"""RISE prefix: random grids upsampled into smooth masks and applied to the input, in the graph.

A row is an s x s grid of 0/1 cells and a shift (dy, dx). The mask is the grid upsampled bilinearly
(half-pixel centres, edges clamped: torch's `align_corners=False`, as TorchRay's RISE) to
(s + 1) * cell, cell = ceil(size / s), then cropped at the shift. Upsampling then cropping is linear
in the grid, so it is written as two small matrix products, m = A_y[dy] @ grid @ A_x[dx]^T, with
A[shift] the rows of the interpolation matrix the crop keeps; no Resize operator is involved, which
keeps the operator identical at every opset and on every execution provider.
perturbed = x * m + baseline * (1 - m). The suffix sums score * mask per job in the graph too
(`mask_sum`), so only [H * W] numbers per job come back per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..resample import interpolation_matrix
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register, scored_model


def cell_size(size: int, grid_size: int) -> int:
    return math.ceil(size / grid_size)


def cropped_interpolation(size: int, grid_size: int) -> np.ndarray:
    """[cell, size, grid_size]: for each shift, the rows of the upsampling matrix the crop keeps."""
    cell = cell_size(size, grid_size)
    full = interpolation_matrix(grid_size, (grid_size + 1) * cell)
    return np.stack([full[shift : shift + size] for shift in range(cell)]).astype(np.float32)


def masks(b: GraphBuilder, sig: ModelSignature, grid_size: int) -> str:
    """Inputs grid [R, s, s] float32 and shift [R, 2] int64; returns masks [R, H, W] float32."""
    height, width = sig.spatial_shape
    grid = b.input("grid", TensorProto.FLOAT, ["rows", grid_size, grid_size])
    shift = b.input("shift", TensorProto.INT64, ["rows", 2])
    rows = b.op("Gather", [b.const(cropped_interpolation(height, grid_size), "rows_interp"),
                           b.op("Gather", [shift, b.const(np.array(0, np.int64))], axis=1)], axis=0)
    cols = b.op("Gather", [b.const(cropped_interpolation(width, grid_size), "cols_interp"),
                           b.op("Gather", [shift, b.const(np.array(1, np.int64))], axis=1)], axis=0)
    return b.op("MatMul", [b.op("MatMul", [rows, grid]), b.op("Transpose", [cols], perm=[0, 2, 1])])


def prefix(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str, mask: str, zero_baseline: bool) -> str:
    """Returns x * m + fill * (1 - m) for each row [R, ...]; input fill [J] unless the baseline is 0.

    With a zero baseline (the default) the blend is a single product, one pass less over the batch.
    """
    m = b.unsqueeze(mask, [sig.channel_axis])
    if zero_baseline:
        return b.op("Mul", [b.job_rows(x0, job_index), m])
    fill = b.input("fill", TensorProto.FLOAT, ["jobs"])
    per_job = b.const(np.array([-1] + [1] * len(sig.example_shape), np.int64))
    # (x - fill) is formed once per job, before the rows are gathered: one pass less over the batch.
    centred = b.op("Sub", [x0, b.op("Reshape", [fill, per_job])])
    row_fill = b.op("Reshape", [b.op("Gather", [fill, job_index], axis=0), per_job])
    return b.op("Add", [b.op("Mul", [b.job_rows(centred, job_index), m]), row_fill])


def weighted_mask_sum(b: GraphBuilder, mask: str, score: str, job_index: str, x0: str) -> str:
    """[J, H * W]: for each job slot, sum over its rows of score * mask (RISE's numerator)."""
    one_hot = b.one_hot_rows(job_index, b.leading_dim(x0))            # [R, J]
    weights = b.op("Mul", [one_hot, b.unsqueeze(score, [1])])         # [R, J]
    flat = b.op("Reshape", [mask, b.const(np.array([0, -1], np.int64))])  # [R, H*W]
    return b.op("MatMul", [b.op("Transpose", [weights], perm=[1, 0]), flat])


MASK_SUM_OUTPUT = "mask_sum"


@register
@dataclass(frozen=True)
class Rise(VariantSpec):
    """Rows: grid [s, s] and shift [2]; constants x0, target (and fill unless the baseline is 0)."""

    kind = "rise"
    score: str = "probability"
    grid_size: int = 7
    zero_baseline: bool = True

    def interface(self) -> VariantInterface:
        constants = ("x0", "target") if self.zero_baseline else ("x0", "target", "fill")
        return VariantInterface(constants, ("grid", "shift"), (SCORE_OUTPUT,), (MASK_SUM_OUTPUT,))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        mask: list[str] = []

        def make(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str) -> str:
            mask.append(masks(b, sig, self.grid_size))
            return prefix(b, sig, x0, job_index, mask[0], self.zero_baseline)

        def mask_sum(b: GraphBuilder, score: str, job_index: str, x0: str) -> None:
            total = weighted_mask_sum(b, mask[0], score, job_index, x0)
            b.output(total, MASK_SUM_OUTPUT, TensorProto.FLOAT, ["jobs", None])

        return scored_model(model, sig, self.describe(), self.score, make, mask_sum)
