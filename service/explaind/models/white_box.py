"""Can a model be explained white-box? Which layers can layer methods use?

Gradients are derived from the graph by onnxgraph.autodiff; a model whose path from input to output
holds an operator without a gradient rule (a tree ensemble, say) stays fully usable black-box, and
this says which operator and node block the rest. Layers are the graph's 4-D float activations; the
default layer is model.yaml's `layers.cam`, else the last 4-D activation feeding a global pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..onnxgraph.autodiff import unsupported_operators
from ..onnxgraph.autodiff.lrp import operators_without_rule
from .repository import LoadedModel


@dataclass(frozen=True)
class WhiteBox:
    """Whether a model can be differentiated, why not, and the layers layer methods may use."""

    available: bool
    reason: str = ""
    layers: tuple[str, ...] = ()       # 4-D float activations, in graph order
    default_layer: str = ""            # model.yaml layers.cam, else the last 4-D input of a global pooling
    rules: tuple[str, ...] = ("plain", "guided", "deconvnet")  # backward rules the model offers
    exported: tuple[str, str] | None = None  # gradients: exported: (seed input, gradient output)
    channels: tuple[tuple[str, int], ...] = ()  # (layer, its channel count) where shape inference knows it
    lrp_reason: str = ""  # why the model has no "lrp" rules (the operator and node without a relevance rule)

    def channels_of(self, layer: str) -> int | None:
        """The layer's channel count (dimension 1 of its [N, K, h, w] activation), None when unknown."""
        return dict(self.channels).get(layer)

    def offers(self, needs: str, rules_needed: tuple[str, ...]) -> bool:
        """Whether this model can serve a white-box method needing `needs` ("INPUT_GRADIENTS" or
        "LAYER_GRADIENTS") with these backward rules."""
        if not self.available:
            return False
        if needs == "LAYER_GRADIENTS" and not self.layers:
            return False
        return all(rule in self.rules for rule in rules_needed)

    def why_not(self) -> str:
        if not self.available:
            return self.reason
        if self.exported:
            return "the model exports its plain input gradient only (layer methods and guided or deconvnet " \
                   "rules need gradients: auto)"
        return "the model has no 4-D activation to use as a layer"


GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"}


def inspect_white_box(entry: LoadedModel) -> WhiteBox:
    config, model = entry.config, entry.model
    if config.gradients == "none":
        return WhiteBox(False, "model.yaml sets gradients: none")
    if config.gradients == "exported":
        return WhiteBox(True, "", rules=("plain",), exported=config.exported_gradients)
    try:
        blocked = unsupported_operators(model, entry.output_spec.name, [entry.input_spec.name])
    except Exception as exc:  # a graph the differentiator cannot walk: black-box only, with the reason
        return WhiteBox(False, f"gradients cannot be derived: {exc}")
    if blocked:
        op, node = blocked[0]
        more = f" (and {len(blocked) - 1} more operators)" if len(blocked) > 1 else ""
        return WhiteBox(False, f"operator {op} (node {node!r}) has no gradient rule{more}")
    found = activations_with_channels(model) if config.kind == "image" else []
    layers = [name for name, _ in found]
    default = config.layers.get("cam", "") or last_pooled_activation(model, set(layers))
    lrp_reason = lrp_unavailable(model, entry.output_spec.name, entry.input_spec.name)
    rules = ("plain", "guided", "deconvnet") + (() if lrp_reason else ("lrp",))
    return WhiteBox(True, "", tuple(layers), default, rules=rules,
                    channels=tuple((name, k) for name, k in found if k is not None), lrp_reason=lrp_reason)


def lrp_unavailable(model: onnx.ModelProto, output: str, source: str) -> str:
    """Why LRP cannot run on the model ("" when it can): the first operator without a relevance rule."""
    try:
        blocked = operators_without_rule(model, output, source)
    except Exception as exc:  # noqa: BLE001  (gradients work; LRP alone is refused, with the reason)
        return f"relevance rules cannot be derived: {exc}"
    if not blocked:
        return ""
    op, node = blocked[0]
    more = f" (and {len(blocked) - 1} more operators)" if len(blocked) > 1 else ""
    return f"operator {op} (node {node!r}) has no relevance rule (LRP){more}"


def four_d_activations(model: onnx.ModelProto) -> list[str]:
    """Node outputs of rank 4 and float type with a spatial extent (not 1 x 1), in graph order."""
    return [name for name, _ in activations_with_channels(model)]


def activations_with_channels(model: onnx.ModelProto) -> list[tuple[str, int | None]]:
    """four_d_activations with each one's channel count (dimension 1; None when not a fixed number):
    Score-CAM's rows, one per channel, known before the input is seen."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    usable: dict[str, int | None] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = v.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT or not tensor.HasField("shape") or len(tensor.shape.dim) != 4:
            continue
        spatial = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim[2:]]
        if spatial != [1, 1]:
            channels = tensor.shape.dim[1]
            usable[v.name] = channels.dim_value if channels.HasField("dim_value") and channels.dim_value > 0 else None
    return [(out, usable[out]) for node in inferred.graph.node for out in node.output if out in usable]


def last_pooled_activation(model: onnx.ModelProto, layers: set[str]) -> str:
    for node in reversed(model.graph.node):
        if node.op_type in GLOBAL_POOLS and node.input and node.input[0] in layers:
            return node.input[0]
    return ""
