"""CAM, class activation mapping (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization").

For a model whose head is global average pooling of a layer A [K, h, w] then one linear layer
(y_c = sum_k W[c, k] mean(A_k) + b_c, the model's output), map_c = sum_k W[c, k] A_k, upsampled
bilinearly (half-pixel centres) to the input size; relu false by default (the paper's map keeps its
sign). The weights are read from the graph: GlobalAveragePool (or ReduceMean over the spatial
axes), then optionally Flatten / Reshape / Squeeze, then Gemm (or MatMul, with or without an Add
of the bias) producing the model's output. A model with anything else between the layer and the
output is refused with the reason. Forward only: the prediction's pass, which also reads the layer. Score: the logit (the map decomposes the pre-softmax score).
eigen_smooth and aug_smooth as every CAM (methods/cam_base.py; aug_smooth: five more predictions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..config import Settings
from ..errors import FailedPrecondition, InvalidArgument, echo
from .base import LAYER_ACTIVATIONS, MethodContext, ModelView
from .cam_base import BaseCam, LayerMap, MapStages, aug_smooth_param, eigen_smooth_param, weighted_map
from .gradient_base import resolve_layer, upsample_param
from .params import Bool, Text

PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Identity"}


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _is_spatial_mean(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = _attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1] in constants:
        axes = constants[node.input[1]].tolist()
    return axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]


def class_weights(model: onnx.ModelProto, output: str) -> tuple[str, np.ndarray]:
    """(the pooled layer, W [classes, K]) of a global-average-pooling + linear head producing `output`;
    FailedPrecondition naming what is there instead."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(_attribute(node, "value", None))
    producer = {out: node for node in graph.node for out in node.output}

    def refuse(why: str) -> FailedPrecondition:
        return FailedPrecondition(f"cam needs a model whose output is a linear layer over the global average "
                                  f"pooling of a 4-D activation (Zhou et al. 2016); {why}")

    tensor, weight, transposed = output, None, False
    seen: list[str] = []
    while True:
        node = producer.get(tensor)
        if node is None:
            raise refuse(f"the output {output!r} is not produced by such a head")
        seen.append(node.op_type)
        if node.op_type in PASS_THROUGH:
            tensor = node.input[0]
        elif node.op_type == "Add" and weight is None and any(i in constants for i in node.input):
            tensor = next(i for i in node.input if i not in constants)
        elif node.op_type == "Gemm" and weight is None and node.input[1] in constants:
            weight = constants[node.input[1]]
            transposed = bool(_attribute(node, "transB", 0))
            if _attribute(node, "transA", 0) or float(_attribute(node, "alpha", 1.0)) != 1.0:
                raise refuse(f"its Gemm node {node.name!r} has transA or alpha != 1")
            tensor = node.input[0]
        elif node.op_type == "MatMul" and weight is None and node.input[1] in constants:
            weight, tensor = constants[node.input[1]], node.input[0]
        elif weight is not None and _is_spatial_mean(node, constants):
            w = np.asarray(weight, np.float64)
            if w.ndim != 2:
                raise refuse(f"the linear layer's weight has shape {list(w.shape)}")
            return node.input[0], (w if transposed else w.T)
        else:
            path = " <- ".join(seen)
            raise refuse(f"found {path} from the output (node {node.name!r}, {node.op_type})")


class Cam(BaseCam):
    name = "cam"
    title = "CAM"
    reference = "Zhou et al. 2016, Learning Deep Features for Discriminative Localization"
    description = "The last layer's activations weighted by the linear head's weights of the class (GAP + linear models)."
    needs = LAYER_ACTIVATIONS
    reads_prediction_layer = True
    params = (
        Text("layer", None, "tensor name of the layer feeding the global average pooling",
             shown="the activation feeding the global pooling"),
        Bool("relu", False, "ReLU of the map (the paper's map keeps its sign)"),
        upsample_param(),
        eigen_smooth_param(),
        aug_smooth_param(),
    )

    def map_rows(self, params: dict[str, Any], ctx: MethodContext) -> int:
        return 0  # the prediction stage reads the layer: nothing more

    def unavailable(self, model: ModelView) -> str:
        reason = super().unavailable(model)
        if reason or model.graph is None:
            return reason
        try:
            class_weights(model.graph, model.signature.output_name)
        except FailedPrecondition as exc:
            return exc.message
        return ""

    def resolve(self, params: dict[str, Any], model: ModelView, settings: Settings, score: str) -> dict[str, Any]:
        pooled, _ = class_weights(model.graph, model.signature.output_name)
        if "layer" in params:
            params["layer"] = resolve_layer(params, self.name, model)
            if params["layer"] != pooled:
                raise InvalidArgument("cam.layer", f"the activation the model's head pools, {pooled!r} (CAM's "
                                      f"weights apply to it alone)", echo(params["layer"]))
        params["layer"] = pooled
        return params

    def layer_map(self, x: np.ndarray, params: dict[str, Any], ctx: MethodContext) -> MapStages:
        activation = (yield from self.activation(x, params, ctx)).astype(np.float64)    # [K, h, w]
        _, weights = class_weights(ctx.model.graph, ctx.model.signature.output_name)  # MPRT re-draws them
        if weights.shape[1] != activation.shape[0]:
            raise FailedPrecondition(f"cam: the linear layer takes {weights.shape[1]} inputs but the pooled layer has "
                                     f"{activation.shape[0]} channels")
        return LayerMap(weighted_map(weights[ctx.target], activation, bool(params["eigen_smooth"])))
