"""Ablation-CAM's ablated layers (Desai & Ramaswamy 2020; pytorch-grad-cam `AblationCAM`), made in
the graph.

A row is one channel k of a layer L (k = -1: none, the unablated score). The layer's activation
A [K, h, w] of each job is a per-job constant (the layer's size, not the input's) with its ablation
value v (pytorch-grad-cam: 0 when min A = 0, else min A - 1e7). The graph replaces the tensor L by
A with channel k set to v, A * (1 - onehot(k)) + v * onehot(k), and runs the rest of the model from
there: the nodes that computed L are left out unless a later node reads them too (a skip past L),
and those see the job's input. So a row costs the model's tail after L, the host sends one integer
per row, and K ablated copies of the layer exist only inside the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..builder import NAMESPACE, GraphBuilder
from ..signature import ModelSignature
from .base import SCORE_OUTPUT, VariantInterface, VariantSpec, register, scored_model

REPLACED = NAMESPACE + "replaced::"


def detach_layer(model: onnx.ModelProto, layer: str) -> onnx.ModelProto:
    """A copy of `model` in which no node produces `layer` (its producer writes REPLACED + layer)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        for i, out in enumerate(node.output):
            if out == layer:
                node.output[i] = REPLACED + layer
                return copy
    raise ValueError(f"no node of the model produces the layer {layer!r}")


def prefix(b: GraphBuilder, sig: ModelSignature, x0: str, job_index: str, layer: str, size: tuple[int, int]) -> str:
    """Inputs activation [J, K, h, w], ablation_value [J] and channel [R]: writes the ablated layer
    [R, K, h, w] under `layer`; returns the rows' inputs (each its job's x0)."""
    h, w = size
    activation = b.input("activation", TensorProto.FLOAT, ["jobs", None, h, w])
    value = b.input("ablation_value", TensorProto.FLOAT, ["jobs"])
    channel = b.input("channel", TensorProto.INT64, ["rows"])
    channels = b.op("Gather", [b.op("Shape", [activation]), b.const(np.array(1, np.int64))])
    ids = b.op("Range", [b.const(np.array(0, np.int64)), channels, b.const(np.array(1, np.int64))])
    hit = b.cast(b.op("Equal", [b.unsqueeze(channel, [1]), ids]), TensorProto.FLOAT)         # [R, K]
    hit = b.unsqueeze(hit, [2, 3])                                                            # [R, K, 1, 1]
    keep = b.op("Sub", [b.const(np.array(1.0, np.float32)), hit])
    rows_value = b.unsqueeze(b.job_rows(value, job_index), [1, 2, 3])                         # [1|R, 1, 1, 1]
    kept = b.op("Mul", [b.job_rows(activation, job_index), keep])
    b.op("Add", [kept, b.op("Mul", [rows_value, hit])], out=layer)
    return b.op("Gather", [x0, job_index], axis=0)


@register
@dataclass(frozen=True)
class ChannelAblation(VariantSpec):
    """Rows: channel (-1: none ablated); constants x0, target, activation [K, h, w], ablation_value."""

    kind = "channel_ablation"
    score: str = "logit"
    layer: str = ""
    layer_height: int = 1
    layer_width: int = 1

    def interface(self) -> VariantInterface:
        return VariantInterface(("x0", "target", "activation", "ablation_value"), ("channel",), (SCORE_OUTPUT,))

    def build(self, model: onnx.ModelProto, sig: ModelSignature) -> onnx.ModelProto:
        size = (self.layer_height, self.layer_width)
        return scored_model(detach_layer(model, self.layer), sig, self.describe(), self.score,
                            lambda b, sig, x0, job_index: prefix(b, sig, x0, job_index, self.layer, size))
