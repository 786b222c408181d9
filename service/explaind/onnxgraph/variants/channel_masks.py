"""Score-CAM's masked inputs (Wang et al. 2020; pytorch-grad-cam `ScoreCAM`), made in the graph.

A row is one channel k of a layer's activation; the activation A [K, h, w] of each job is a per-job
constant (small: the layer's size, not the input's). The graph upsamples A_k bilinearly to the
input's size with the corners aligned (pytorch-grad-cam uses `nn.UpsamplingBilinear2d`), as two
MatMuls, min-max normalises it, m = (u - min u) / (max u - min u + 1e-8), and scores x * m. So the
host sends one integer per row however large the input, and K masked copies never exist on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..builder import GraphBuilder
from ..resample import aligned_interpolation_matrix
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register, scored_model

EPSILON = 1e-8  # pytorch-grad-cam's guard against a constant channel


def prefix(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str, layer_size: tuple[int, int]) -> str:
    """Inputs activation [J, K, h, w] and channel [R]; returns x * normalised upsampled A_channel [R, ...]."""
    h, w = layer_size
    height, width = sig.spatial_shape
    activation = b.input("activation", TensorProto.FLOAT, ["jobs", None, h, w])
    channel = b.input("channel", TensorProto.INT64, ["rows"])
    channels = b.op("Gather", [b.op("Shape", [activation]), b.const(np.array(1, np.int64))])
    flat = b.op("Reshape", [activation, b.const(np.array([-1, h, w], np.int64))])            # [J * K, h, w]
    index = b.op("Add", [b.op("Mul", [job_index, channels]), channel])
    maps = b.op("Gather", [flat, index], axis=0)                                              # [R, h, w]
    rows_matrix = b.const(aligned_interpolation_matrix(h, height).astype(np.float32), "rows_interp")
    cols_matrix = b.const(aligned_interpolation_matrix(w, width).T.astype(np.float32), "cols_interp")
    up = b.op("MatMul", [b.op("MatMul", [rows_matrix, maps]), cols_matrix])                  # [R, H, W]
    low = b.reduce("ReduceMin", up, [1, 2])
    high = b.reduce("ReduceMax", up, [1, 2])
    span = b.op("Add", [b.op("Sub", [high, low]), b.const(np.array(EPSILON, np.float32))])
    mask = b.op("Div", [b.op("Sub", [up, low]), span])
    return b.op("Mul", [b.job_rows(x0, job_index), b.unsqueeze(mask, [sig.channel_axis])])


@register
@dataclass(frozen=True)
class ChannelMasks(VariantSpec):
    """Rows: channel; constants x0, target, activation [K, h, w] (h, w: the layer's size)."""

    kind = "channel_masks"
    score: str = "logit"
    layer_height: int = 1
    layer_width: int = 1

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target", "activation"), ("channel",), (SCORE_OUTPUT,))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        size = (self.layer_height, self.layer_width)
        return scored_model(model, sig, self.describe(), self.score,
                            lambda b, sig, x0, job_index: prefix(b, sig, x0, job_index, size))
