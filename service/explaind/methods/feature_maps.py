"""Feature maps and gates (survey 2.1.5 "feature map visualisation", 2.2.2 attention; Zeiler &
Fergus 2014 show a layer's strongest channels, Hu et al. 2018 the squeeze-excitation gates).

A layer's activation A [K, h, w] for the input (read by the prediction's pass). Its channels are
ranked by their spatial mean activation (rank_by activation, forward only) or by their Grad-CAM
weight, the spatial mean of the target score's gradient there (rank_by grad_cam: one gradient row,
the score the logit by default); the top_k (default 16) are returned, best first, as arrays:
feature_maps [k, h, w], channels [k] (int32), channel_scores [k]. Gates: every Sigmoid or
HardSigmoid output of the graph that multiplies an activation (through Reshape, Unsqueeze,
Flatten, Expand or Identity: squeeze-excitation's channel gates, spatial attention's maps), read
with one prediction row each, as gate:<tensor>: [C] for a channel gate (1 x 1 spatially), else the
mean over its channels upsampled onto the input [H, W]. The attribution is the mean of the selected
channels upsampled onto the input; rendered (`render`), the PNG is the grid of the selected
channels, each normalised on its own and drawn over the input, best first, row by row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx

from ..config import Settings
from ..errors import FailedPrecondition
from ..onnxgraph.resample import upsample
from ..onnxgraph.variants.predict import LAYER_OUTPUT
from ..render import RenderOptions, render_rgb
from ..render.heatmap import encode_png
from .base import (LAYER_ACTIVATIONS, LAYER_GRADIENTS, LOGIT, Method, MethodContext, ModelView, Result, Stages,
                   prediction_stage)
from .gradient_base import gradient_stage, layer_param, resolve_layer, upsample_param
from .params import Choice, Int

GATES = {"Sigmoid", "HardSigmoid"}
PASS_THROUGH = {"Reshape", "Unsqueeze", "Flatten", "Expand", "Identity"}
MAX_GATES = 64  # gates read per request (each one prediction row)


def gate_tensors(model: onnx.ModelProto | None) -> tuple[str, ...]:
    """The outputs of the graph's Sigmoid / HardSigmoid nodes that reach a Mul through shape-only ops,
    in graph order (at most MAX_GATES)."""
    if model is None:
        return ()
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def multiplies(tensor: str, depth: int = 0) -> bool:
        for node in consumers.get(tensor, []):
            if node.op_type == "Mul":
                return True
            reshaped = node.op_type in PASS_THROUGH and depth < 4 and node.input[0] == tensor
            if reshaped and multiplies(node.output[0], depth + 1):
                return True
        return False

    found = [n.output[0] for n in model.graph.node if n.op_type in GATES and multiplies(n.output[0])]
    return tuple(found[:MAX_GATES])


def gate_map(values: np.ndarray, how: str, model: ModelView) -> np.ndarray:
    """A gate tensor (no batch dim) as [C] (1 x 1 spatially) or its channel mean upsampled [H, W]."""
    values = np.asarray(values, np.float64)
    if values.ndim <= 1 or (values.ndim == 3 and values.shape[1:] == (1, 1)):
        return values.reshape(-1)
    spatial = values if values.ndim == 2 else values.reshape(-1, *values.shape[-2:]).mean(axis=0)
    return upsample(spatial, model.signature.spatial_shape, how)


def top_channels(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first (ties: the lower index first)."""
    return np.argsort(-scores, kind="stable")[:k]


def grid_shape(k: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid of k tiles."""
    columns = math.ceil(math.sqrt(k))
    return math.ceil(k / columns), columns


class FeatureMaps(Method):
    name = "feature_maps"
    title = "Feature maps"
    reference = ("Zeiler & Fergus 2014 (feature visualisation); Hu et al. 2018 (squeeze-excitation gates); "
                 "survey 2.1.5, 2.2.2")
    description = "A layer's strongest channels for the input (by activation or Grad-CAM weight) and the model's gates."
    needs = LAYER_ACTIVATIONS
    kinds = frozenset({"image"})
    default_score = LOGIT
    arrays = ("feature_maps", "channels", "channel_scores", "gate:<tensor>")
    params = (
        layer_param(),
        Int("top_k", 16, "channels returned (at most the layer's)", 1, 1024),
        Choice("rank_by", "activation", ("activation", "grad_cam"), "activation (the channel's spatial mean) | "
               "grad_cam (its Grad-CAM weight: one gradient row)"),
        upsample_param(choices=("bilinear", "nearest")),
    )

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        params["layer"] = resolve_layer(params, self.name, model)
        white_box = model.white_box
        if params["rank_by"] == "grad_cam" and not white_box.offers(LAYER_GRADIENTS, ("plain",)):
            raise FailedPrecondition(f"feature_maps.rank_by grad_cam needs the model's gradients: "
                                     f"{white_box.why_not()}")
        return params

    def prediction_layer(self, params: dict[str, Any]) -> str:
        return str(params["layer"])

    def planned_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return (params["rank_by"] == "grad_cam") + len(self.gates(ctx.model))

    def gates(self, model: ModelView) -> tuple[str, ...]:
        """The graph's gate tensors, found once per model version."""
        return model.derive("feature_maps.gates", lambda: gate_tensors(model.graph))

    def stages(self, params: dict[str, Any], ctx: MethodContext) -> Stages:
        activation = np.asarray(ctx.layer_activation, np.float64)                    # [K, h, w]
        gates = self.gates(ctx.model)
        stages: list[Any] = [prediction_stage(ctx.x, gate) for gate in gates]
        if params["rank_by"] == "grad_cam":
            stages.append(gradient_stage(ctx, layer=params["layer"]))
        done = (yield stages) if stages else []
        if params["rank_by"] == "grad_cam":
            scores = done[-1].layer_grad.mean(axis=(1, 2))
        else:
            scores = activation.mean(axis=(1, 2))
        chosen = top_channels(scores, min(int(params["top_k"]), activation.shape[0]))
        arrays = {"feature_maps": activation[chosen].astype(np.float32), "channels": chosen.astype(np.int32),
                  "channel_scores": scores[chosen].astype(np.float32)}
        for gate, predicted in zip(gates, done):
            values = gate_map(predicted.outputs[LAYER_OUTPUT], params["upsample"], ctx.model)
            arrays[f"gate:{gate}"] = values.astype(np.float32)
        mean = activation[chosen].mean(axis=0)
        return Result(upsample(mean, ctx.model.signature.spatial_shape, params["upsample"]), arrays=arrays)

    def render(self, result: Result, options: RenderOptions, image: np.ndarray | None) -> bytes:
        """The grid of the selected channels, each upsampled onto the input and drawn over it."""
        maps = result.arrays["feature_maps"]
        height, width = (image.shape[0], image.shape[1]) if image is not None else result.attribution.shape
        rows, columns = grid_shape(len(maps))
        grid = np.full((rows * height, columns * width, 3), 255, np.uint8)
        for i, tile in enumerate(maps):
            up = upsample(np.asarray(tile, np.float64), (height, width), "bilinear")
            r, c = divmod(i, columns)
            grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = render_rgb(up, options, image)
        return encode_png(grid)
