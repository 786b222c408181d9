"""Coalition prefix for tabular Kernel SHAP: each row is a coalition mask; the graph expands it.

A row's code is a 0/1 mask over the M features. The prefix builds, for every background row b of
the job (stacked per job: background [J, B, M], weights [J, B] summing to 1), the input
x_z = mask * x + (1 - mask) * b, runs the model on all R * B of them, and the suffix returns each
row's coalition value v(z) = sum_b w_b f_c(x_z(b)) [R]. The host sends M numbers per coalition and
gets one back, whatever the background size.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .builder import GraphBuilder
from .signature import ModelSignature


def prefix(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str, background_rows: int) -> tuple[str, str]:
    """Returns (model input [R * B, M], per-row background weights [R, B])."""
    (num_features,) = sig.example_shape
    mask = b.input("mask", TensorProto.FLOAT, ["rows", num_features])
    background = b.input("background", TensorProto.FLOAT, ["jobs", background_rows, num_features])
    weights = b.input("background_weights", TensorProto.FLOAT, ["jobs", background_rows])
    x = b.unsqueeze(b.op("Gather", [x0, job_index], axis=0), [1])            # [R, 1, M]
    rows_background = b.op("Gather", [background, job_index], axis=0)         # [R, B, M]
    m = b.unsqueeze(mask, [1])                                                 # [R, 1, M]
    mixed = b.op("Add", [rows_background, b.op("Mul", [m, b.op("Sub", [x, rows_background])])])
    flat = b.op("Reshape", [mixed, b.const(np.array([-1, num_features], np.int64))])
    return flat, b.op("Gather", [weights, job_index], axis=0)


def coalition_value(b: GraphBuilder, scores: str, row_weights: str, target: str, job_index: str,
                    background_rows: int) -> str:
    """[R]: sum_b w_b scores[r * B + b, target_r] from the model's [R * B, K] scores."""
    classes = b.op("Slice", [b.op("Shape", [scores]), b.const(np.array([1], np.int64)), b.const(np.array([2], np.int64))])
    shape = b.op("Concat", [b.const(np.array([-1, background_rows], np.int64)), classes], axis=0)
    per_row = b.op("Reshape", [scores, shape])                                                  # [R, B, K]
    mean = b.op("MatMul", [b.unsqueeze(row_weights, [1]), per_row])                             # [R, 1, K]
    mean = b.op("Reshape", [mean, b.const(np.array([0, -1], np.int64))])                       # [R, K]
    row_target = b.unsqueeze(b.op("Gather", [target, job_index], axis=0), [1])
    picked = b.op("GatherElements", [mean, row_target], axis=1)
    return b.op("Reshape", [picked, b.const(np.array([-1], np.int64))])
