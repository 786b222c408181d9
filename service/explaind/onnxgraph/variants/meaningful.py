"""Meaningful perturbation in the graph (Fong & Vedaldi 2017): the upsampled, jittered mask, the
perturbed input and the gradient of the target score with respect to the low-resolution mask.

A row is one point of the optimisation: the mask M [s, s] and its jitter shift (dy, dx); the job's
constants are the input x and its perturbation p (blurred, constant or noisy, [J, ...]). The graph
makes m = U_y(dy) M U_x(dx)^T, U the bilinear upsampling matrix (torch's interpolate, half-pixel
centres) with its rows shifted by the jitter (row i takes row clip(i - d): the mask moved, edges
replicated), and Phi = p + m (x - p) as the model's input. Its suffix, from the model's own input
gradient g: d f / d m = sum_channels g (x - p) and d f / d M = U_y(dy)^T (d f / d m) U_x(dx).
Outputs: score [R], mask [R, H, W], param_grad [R, s, s].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from . import gradient as gradients
from ..builder import NAMESPACE, GraphBuilder
from ..compose import model_opset, splice
from ..score import class_scores, declare_common_inputs, declare_target, target_score
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register

MASK_OUTPUT = "mask"
PARAM_GRAD_OUTPUT = "param_grad"


def upsample_matrix(size_out: int, size_in: int) -> np.ndarray:
    """[out, in]: bilinear interpolation with half-pixel centres (torch align_corners=False)."""
    u = np.zeros((size_out, size_in), np.float64)
    scale = size_in / size_out
    for i in range(size_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), size_in - 1)
        i1 = min(i0 + 1, size_in - 1)
        u[i, i0] += 1.0 - (src - i0)
        u[i, i1] += src - i0
    return u


def _shifted_rows(b: GraphBuilder, u: np.ndarray, shift: str, axis: int) -> str:
    """[R, out, in]: u's rows taken at clip(i - shift[:, axis]) for each row's shift [R, 2]."""
    size = len(u)
    positions = b.const(np.arange(size, dtype=np.float32), "positions")
    d = b.unsqueeze(b.cast(b.op("Gather", [shift, b.const(np.array(axis, np.int64))], axis=1), TensorProto.FLOAT), [1])
    index = b.op("Clip", [b.op("Sub", [positions, d]), b.const(np.array(0.0, np.float32)),
                          b.const(np.array(size - 1, np.float32))])
    return b.op("Gather", [b.const(u.astype(np.float32), "upsample"), b.cast(index, TensorProto.INT64)], axis=0)


def build_model(model: onnx.ModelProto, sig: ModelSignature, *, mask_size: int, score: str,
                exported: tuple[str, str] | None, describe: str) -> onnx.ModelProto:
    height, width = sig.spatial_shape
    nchw = sig.layout == "NCHW"
    b = GraphBuilder(model_opset(model), describe)
    x0, job_index = declare_common_inputs(b, sig.example_shape)
    target = declare_target(b)
    perturbation = b.input("perturbation", TensorProto.FLOAT, ["jobs", *sig.example_shape])
    params = b.input("mask_params", TensorProto.FLOAT, ["rows", mask_size, mask_size])
    shift = b.input("shift", TensorProto.INT64, ["rows", 2])
    uy = _shifted_rows(b, upsample_matrix(height, mask_size), shift, 0)                      # [R, H, s]
    ux = _shifted_rows(b, upsample_matrix(width, mask_size), shift, 1)                       # [R, W, s]
    mask = b.op("MatMul", [b.op("MatMul", [uy, params]), b.op("Transpose", [ux], perm=[0, 2, 1])])  # [R, H, W]
    x = b.job_rows(x0, job_index)
    p = b.op("Gather", [perturbation, job_index], axis=0)
    difference = b.op("Sub", [x, p])
    shown = b.op("Add", [p, b.op("Mul", [b.unsqueeze(mask, [1 if nchw else 3]), difference])])
    b.op("Identity", [shown], out=sig.input_name)
    b.mark_model()
    scores = class_scores(b, sig.output_name, score, sig.scores)
    b.output(target_score(b, scores, target, job_index), SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
    b.output(mask, MASK_OUTPUT, TensorProto.FLOAT, ["rows", height, width])
    composed = splice(model, sig.input_name, b, keep=(exported[1],) if exported else ())
    derived = gradients.with_gradients(composed, b, sig, scores, target, job_index, score=score, rule="plain",
                                       layer="", exported=exported)
    suffix = GraphBuilder(b.opset, describe + "/backward")
    input_grad = NAMESPACE + gradients.INPUT_GRAD_OUTPUT
    g_mask = suffix.reduce("ReduceSum", suffix.op("Mul", [input_grad, difference]), [1 if nchw else 3], 0)  # [R, H, W]
    g_params = suffix.op("MatMul", [suffix.op("MatMul", [suffix.op("Transpose", [uy], perm=[0, 2, 1]), g_mask]), ux])
    suffix.output(g_params, PARAM_GRAD_OUTPUT, TensorProto.FLOAT, ["rows", mask_size, mask_size])
    return gradients.consume_input_gradient(derived, suffix)


@register
@dataclass(frozen=True)
class Meaningful(VariantSpec):
    """Rows: mask_params [s, s] and shift [2]; constants x0, target, perturbation. Outputs the score,
    the upsampled mask and d score / d mask_params, the score's gradient from the model's graph."""

    kind = "meaningful"
    score: str = "probability"
    mask_size: int = 28
    exported: tuple[str, str] | None = None

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target", "perturbation"), ("mask_params", "shift"),
                                (SCORE_OUTPUT, MASK_OUTPUT, PARAM_GRAD_OUTPUT))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        return build_model(model, sig, mask_size=self.mask_size, score=self.score, exported=self.exported,
                           describe=self.describe())
