"""Coalition prefix for tabular Kernel SHAP: each row is a coalition mask; the graph expands it.

A row's code is a 0/1 mask over the M features. The prefix builds, for every background row b of
the job (stacked per job: background [J, B, M], weights [J, B] summing to 1), the input
x_z = mask * x + (1 - mask) * b, runs the model on all R * B of them, and the suffix returns each
row's coalition value v(z) = sum_b w_b f_c(x_z(b)) [R]. The host sends M numbers per coalition and
gets one back, whatever the background size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..compose import model_opset, splice
from ..score import class_scores, declare_common_inputs, declare_target
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register


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


@register
@dataclass(frozen=True)
class TabularCoalition(VariantSpec):
    """Rows: mask [M]; constants x0, target, background [B, M], background_weights [B]."""

    kind = "coalition_tabular"
    score: str = "probability"
    background_rows: int = 1

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target", "background", "background_weights"), ("mask",), (SCORE_OUTPUT,))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        b = GraphBuilder(model_opset(model), self.describe())
        x0, job_index = declare_common_inputs(b, sig.example_shape)
        target = declare_target(b)
        model_input, row_weights = prefix(b, sig, x0, job_index, self.background_rows)
        b.op("Identity", [model_input], out=sig.input_name)
        b.mark_model()
        scores = class_scores(b, sig.output_name, self.score, sig.scores)
        value = coalition_value(b, scores, row_weights, target, job_index, self.background_rows)
        b.output(value, SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
        return splice(model, sig.input_name, b)
