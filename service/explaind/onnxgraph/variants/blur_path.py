"""Blur IG's path in the graph (Xu et al. 2020; the PAIR `saliency` package's BlurIG): each row is a
point on the path of Gaussian blurs, coded by its sigma, and the graph gives the model's input
gradient there times d blur / d sigma.

Codes per row: sigma, radius, norm (the blur at the point) and sigma_next, radius_next, norm_next
(the blur grad_step further), grad_step. A blur is scipy's `gaussian_filter` (mode "constant": zero
padding) over the spatial axes: per axis the matrix B[i, j] = exp(-(i - j)^2 / (2 sigma^2)) / norm for
|i - j| <= radius, radius = int(4 sigma + 0.5) and norm the sum of the taps (made on the host, in
float64, as scipy does; sigma 0 is coded as sigma 1, radius 0, norm 1: the identity). The blurred
input is B_y X B_x^T per channel; slope = (blur_next - blur) / grad_step; outputs score [R] and
slope_grad = slope * d f / d input [R, ...] (the model's own gradient), which Blur IG sums with
weights sigma_{i+1} - sigma_i.
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

SLOPE_GRAD_OUTPUT = "slope_grad"
KERNEL_BUDGET_BYTES = 256 * 2**20  # a batch's blur matrices and their temporaries
CODES = ("sigma", "radius", "norm", "sigma_next", "radius_next", "norm_next", "grad_step")


def blur_codes(sigma: float) -> tuple[float, float, float]:
    """(sigma, radius, norm) of scipy's 1-D Gaussian kernel (truncate 4); sigma 0: the identity."""
    if sigma == 0:
        return 1.0, 0.0, 1.0
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float64) / sigma) ** 2)
    return float(sigma), float(radius), float(taps.sum())


def _kernel(b: GraphBuilder, size: int, sigma: str, radius: str, norm: str) -> str:
    """[R, 1, size, size] blur matrices from per-row codes [R, 1, 1, 1]."""
    index = np.arange(size, dtype=np.float32)
    offset = index[:, None] - index[None, :]
    squared = b.const((offset * offset).astype(np.float32), "offset_squared")
    distance = b.const(np.abs(offset), "offset")
    half = b.const(np.array(-0.5, np.float32))
    taps = b.op("Exp", [b.op("Div", [b.op("Mul", [squared, half]), b.op("Mul", [sigma, sigma])])])
    inside = b.cast(b.op("Not", [b.op("Greater", [distance, radius])]), TensorProto.FLOAT)
    return b.op("Div", [b.op("Mul", [taps, inside]), norm])


def _blur(b: GraphBuilder, x: str, height: int, width: int, codes: list[str]) -> str:
    """B_y x B_x^T for x [R, C, H, W]."""
    sigma, radius, norm = codes
    rows = _kernel(b, height, sigma, radius, norm)
    cols = _kernel(b, width, sigma, radius, norm)
    return b.op("MatMul", [b.op("MatMul", [rows, x]), b.op("Transpose", [cols], perm=[0, 1, 3, 2])])


def build_model(model: onnx.ModelProto, sig: ModelSignature, *, score: str, exported: tuple[str, str] | None,
                describe: str) -> onnx.ModelProto:
    height, width = sig.spatial_shape
    nchw = sig.layout == "NCHW"
    b = GraphBuilder(model_opset(model), describe)
    x0, job_index = declare_common_inputs(b, sig.example_shape)
    target = declare_target(b)
    per_row = b.const(np.array([-1, 1, 1, 1], np.int64))
    codes = [b.op("Reshape", [b.input(name, TensorProto.FLOAT, ["rows"]), per_row]) for name in CODES]
    rows = b.op("Gather", [x0, job_index], axis=0)
    x = rows if nchw else b.op("Transpose", [rows], perm=[0, 3, 1, 2])
    blurred = _blur(b, x, height, width, codes[0:3])
    slope = b.op("Div", [b.op("Sub", [_blur(b, x, height, width, codes[3:6]), blurred]), codes[6]])
    if not nchw:
        blurred = b.op("Transpose", [blurred], perm=[0, 2, 3, 1])
        slope = b.op("Transpose", [slope], perm=[0, 2, 3, 1])
    b.op("Identity", [blurred], out=sig.input_name)
    b.mark_model()
    scores = class_scores(b, sig.output_name, score, sig.scores)
    b.output(target_score(b, scores, target, job_index), SCORE_OUTPUT, TensorProto.FLOAT, ["rows"])
    composed = splice(model, sig.input_name, b, keep=(slope,) + ((exported[1],) if exported else ()))
    derived = gradients.with_gradients(composed, b, sig, scores, target, job_index, score=score, rule="plain",
                                       layer="", exported=exported)
    suffix = GraphBuilder(b.opset, describe + "/slope")
    input_grad = NAMESPACE + gradients.INPUT_GRAD_OUTPUT
    suffix.output(suffix.op("Mul", [input_grad, slope]), SLOPE_GRAD_OUTPUT, TensorProto.FLOAT,
                  ["rows", *sig.example_shape])
    return gradients.consume_input_gradient(derived, suffix)


@register
@dataclass(frozen=True)
class BlurPath(VariantSpec):
    """Rows: the codes of CODES; constants x0, target. Outputs the score at the blurred input and
    slope_grad, d blur / d sigma times the model's input gradient there."""

    kind = "blur_path"
    score: str = "logit"
    exported: tuple[str, str] | None = None

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target"), CODES, (SCORE_OUTPUT, SLOPE_GRAD_OUTPUT))

    def max_batch_rows(self, sig: ModelSignature, configured: int) -> int:
        """Each row makes four blur matrices (two sigmas, two axes) and ~4 temporaries of each."""
        height, width = sig.spatial_shape
        per_row = 4 * 4 * 2 * (height * height + width * width)
        return max(1, min(configured, KERNEL_BUDGET_BYTES // per_row))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        return build_model(model, sig, score=self.score, exported=self.exported, describe=self.describe())
