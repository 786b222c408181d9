"""RISE prefix: random grids upsampled into smooth masks and applied to the input, in the graph.

A row is an s x s grid of 0/1 cells and a shift (dy, dx). The mask is the grid upsampled bilinearly
(half-pixel centres, edges clamped: torch's `align_corners=False`, as TorchRay's RISE) to
(s + 1) * cell, cell = ceil(size / s), then cropped at the shift. Upsampling then cropping is linear
in the grid, so it is written as two small matrix products, m = A_y[dy] @ grid @ A_x[dx]^T, with
A[shift] the rows of the interpolation matrix the crop keeps; no Resize operator is involved, which
keeps the operator identical at every opset and on every execution provider.
perturbed = x * m + baseline * (1 - m).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from .builder import GraphBuilder
from .signature import ModelSignature


def cell_size(size: int, grid_size: int) -> int:
    return math.ceil(size / grid_size)


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] linear interpolation with half-pixel centres and clamped edges."""
    matrix = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        source = min(max((i + 0.5) * scale - 0.5, 0.0), in_size - 1)
        low = int(math.floor(source))
        high = min(low + 1, in_size - 1)
        weight = source - low
        matrix[i, low] += 1.0 - weight
        matrix[i, high] += weight
    return matrix


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
