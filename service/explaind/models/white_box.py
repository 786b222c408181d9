"""Can a model be explained white-box? Which layers can layer methods use?

Gradients are derived from the graph by onnxgraph.autodiff; a model whose path from input to output
holds an operator without a gradient rule (a tree ensemble, say) stays fully usable black-box, and
this says which operator and node block the rest. Layers are the graph's 4-D float activations; the
default layer is model.yaml's `layers.cam`, else the last 4-D activation feeding a global pooling.
Each layer's channel count (Score-CAM's rows, planned before any work) comes from ONNX shape
inference; where the graph leaves it symbolic (a `view(n, -1, h, w)` exported with dynamic axes),
inference runs again, with data propagation, on a weightless copy whose input has the model's
concrete example shape (batch 1): once per model version, with the rest of the white box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
    blocked_rules: tuple[tuple[str, str], ...] = ()  # (rule, why not: the operator and node) of the others

    @property
    def lrp_reason(self) -> str:
        """Why the model offers no "lrp" rules ("" when it does or nothing says)."""
        return dict(self.blocked_rules).get("lrp", "")
    exported: tuple[str, str] | None = None  # gradients: exported: (seed input, gradient output)
    channels: tuple[tuple[str, int], ...] = ()  # (layer, its channel count) where shape inference knows it

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

    def why_not(self, rules_needed: tuple[str, ...] = ()) -> str:
        if not self.available:
            return self.reason
        blocked = dict(self.blocked_rules)
        for rule in rules_needed:
            if rule in blocked:
                return blocked[rule]
        if self.exported:
            return "the model exports its plain input gradient only (layer methods and guided or deconvnet " \
                   "rules need gradients: auto)"
        return "the model has no 4-D activation to use as a layer"


# Rule variants checked operator by operator when a model loads (guided and deconvnet change only
# ReLU and serve wherever the plain gradient does); a model may offer some and not others.
CHECKED_RULES = ("deep_lift", "rect_grad", "excitation", "excitation_contrastive")

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
    found = activations_with_channels(model, entry.input_spec.name, tuple(entry.example_shape)) \
        if config.kind == "image" else []
    layers = [name for name, _ in found]
    default = config.layers.get("cam", "") or last_pooled_activation(model, set(layers))
    rules, blocked_rules = checked_rules(model, entry.output_spec.name, entry.input_spec.name)
    lrp_reason = lrp_unavailable(model, entry.output_spec.name, entry.input_spec.name)
    rules += () if lrp_reason else ("lrp",)
    blocked_rules += (("lrp", lrp_reason),) if lrp_reason else ()
    return WhiteBox(True, "", tuple(layers), default, rules=("plain", "guided", "deconvnet", *rules),
                    blocked_rules=blocked_rules, channels=tuple((name, k) for name, k in found if k is not None))


def lrp_unavailable(model: onnx.ModelProto, output: str, source: str) -> str:
    """Why LRP cannot run on the model ("" when it can): the first operator without a relevance rule
    (LRP's composites choose rules per node, so it is checked apart from CHECKED_RULES)."""
    try:
        blocked = operators_without_rule(model, output, source)
    except Exception as exc:  # noqa: BLE001  (gradients work; LRP alone is refused, with the reason)
        return f"relevance rules cannot be derived: {exc}"
    if not blocked:
        return ""
    op, node = blocked[0]
    more = f" (and {len(blocked) - 1} more operators)" if len(blocked) > 1 else ""
    return f"operator {op} (node {node!r}) has no relevance rule (LRP){more}"


def checked_rules(model: onnx.ModelProto, output: str, input_name: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(the CHECKED_RULES the model supports, (rule, reason) for each it does not)."""
    supported, blocked = [], []
    for rule in CHECKED_RULES:
        try:
            missing = unsupported_operators(model, output, [input_name], rule=rule)
        except Exception as exc:  # noqa: BLE001  (as for the plain rules: the reason is reported)
            blocked.append((rule, f"the {rule} rules cannot be applied: {exc}"))
            continue
        if missing:
            op, node = missing[0]
            more = f" (and {len(missing) - 1} more operators)" if len(missing) > 1 else ""
            blocked.append((rule, f"operator {op} (node {node!r}) has no {rule} rule{more}"))
        else:
            supported.append(rule)
    return tuple(supported), tuple(blocked)


def four_d_activations(model: onnx.ModelProto) -> list[str]:
    """Node outputs of rank 4 and float type with a spatial extent (not 1 x 1), in graph order."""
    return [name for name, _ in activations_with_channels(model)]


def activations_with_channels(model: onnx.ModelProto, input_name: str = "",
                              example_shape: tuple[int, ...] = ()) -> list[tuple[str, int | None]]:
    """four_d_activations with each one's channel count (dimension 1; None when not a fixed number):
    Score-CAM's rows, one per channel, known before the input is seen. A count the graph leaves
    symbolic is inferred again with the input `input_name` fixed at [1, *example_shape] (when given)."""
    inferred = _inferred(model)
    usable = _four_d(inferred)
    if input_name and example_shape and any(k is None for k in usable.values()):
        fixed = _four_d(_inferred(fixed_input_copy(model, input_name, (1, *example_shape)), data_prop=True))
        usable = {name: k if k is not None else fixed.get(name) for name, k in usable.items()}
    return [(out, usable[out]) for node in inferred.graph.node for out in node.output if out in usable]


def _inferred(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    except Exception:
        return model


def _four_d(inferred: onnx.ModelProto) -> dict[str, int | None]:
    """Rank-4 float values with a spatial extent (not 1 x 1) and their channel counts (None: unknown)."""
    usable: dict[str, int | None] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = v.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT or not tensor.HasField("shape") or len(tensor.shape.dim) != 4:
            continue
        spatial = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim[2:]]
        if spatial != [1, 1]:
            channels = tensor.shape.dim[1]
            usable[v.name] = channels.dim_value if channels.HasField("dim_value") and channels.dim_value > 0 else None
    return usable


# Initializers up to this many elements keep their values in the copy shape inference reads (shape
# constants that data propagation folds); larger ones (weights) become inputs of the same type.
SHAPE_CONSTANT_ELEMENTS = 64


def fixed_input_copy(model: onnx.ModelProto, input_name: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    """The graph with input `input_name` of a concrete `shape` and its large initializers (weights)
    replaced by inputs of their type and shape: what static shape inference needs, without a copy of
    the weights."""
    graph = model.graph
    copy = onnx.ModelProto()
    copy.ir_version = max(model.ir_version, 4)  # initializers need not be inputs (IR 4)
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    g = copy.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.output.extend(graph.output)
    g.sparse_initializer.extend(graph.sparse_initializer)
    names = {v.name for v in graph.input}
    for value in graph.input:
        added = g.input.add()
        added.CopyFrom(value)
        if value.name == input_name:
            dims = added.type.tensor_type.shape.dim
            del dims[:]
            for size in shape:
                dims.add().dim_value = int(size)
    for tensor in graph.initializer:
        if int(np.prod(tensor.dims)) <= SHAPE_CONSTANT_ELEMENTS:
            g.initializer.add().CopyFrom(tensor)
        elif tensor.name not in names:
            g.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return copy


def last_pooled_activation(model: onnx.ModelProto, layers: set[str]) -> str:
    for node in reversed(model.graph.node):
        if node.op_type in GLOBAL_POOLS and node.input and node.input[0] in layers:
            return node.input[0]
    return ""
