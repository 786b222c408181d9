"""A model's parametrised layers and copies of its graph with some of them re-drawn (MPRT).

A layer is a node of a parametrised operator (Conv, ConvTranspose, Gemm, MatMul, BatchNormalization,
InstanceNormalization, LayerNormalization, GroupNormalization) with at least one float initializer
among its parameter inputs; an Add that adds a float initializer to such a node's output directly
(the bias of a MatMul, as exporters write nn.Linear on 3-D inputs) belongs to that layer. Layers come
in graph order (ONNX nodes are topologically sorted): the last is the top of the network. An
initializer used by several nodes belongs to the first of them. Weights held by Constant nodes
rather than initializers are not seen (and stay).

Two ways of re-drawing, since an ONNX file does not say how its training framework initialised it:
- `uniform` (MPRT's default): the distributions torch's `reset_parameters` uses, which is what Quantus
  applies to a torch model, read off the operator: weights and biases of Conv, ConvTranspose, Gemm
  and MatMul from U(-b, b) with b = 1 / sqrt(fan_in) (torch's kaiming_uniform with a = sqrt(5), and
  its bias rule), fan_in the weight's input size (Conv: C/groups x kernel; Gemm and MatMul: the
  contracted dimension); normalisation layers reset (scale 1, bias 0, mean 0, variance 1);
- `normal`: every parameter tensor from a normal with the original tensor's mean and standard
  deviation (variances: the absolute value), Adebayo et al.'s re-initialisation from the weights'
  own scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

UNIFORM, NORMAL = "uniform", "normal"
DENSE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
NORMALISATIONS = {"BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"}
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# Reset values of the normalisations' parameter inputs, by input position (torch's reset_parameters
# and reset_running_stats): scale 1, bias 0, running mean 0, running variance 1.
RESET = {"BatchNormalization": {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}, "InstanceNormalization": {1: 1.0, 2: 0.0},
         "LayerNormalization": {1: 1.0, 2: 0.0}, "GroupNormalization": {1: 1.0, 2: 0.0}}
VARIANCE = {("BatchNormalization", 4)}


@dataclass(frozen=True)
class Layer:
    """One parametrised layer: its node (index in graph.node, name, operator) and its parameters,
    (initializer name, role) with role "weight", "bias" or the normalisation input position."""

    node: int
    name: str
    op: str
    parameters: tuple[tuple[str, str], ...]
    fan_in: int


def _parameter_inputs(node: onnx.NodeProto, floats: dict[str, onnx.TensorProto]) -> list[tuple[str, str]]:
    """(initializer, role) of a parametrised node's parameter inputs that are float initializers."""
    inputs = list(node.input)
    found: list[tuple[str, str]] = []
    if node.op_type in ("Conv", "ConvTranspose"):
        positions = {1: "weight", 2: "bias"}
    elif node.op_type == "Gemm":
        positions = {0: "weight", 1: "weight", 2: "bias"}
    elif node.op_type == "MatMul":
        positions = {0: "weight", 1: "weight"}
    else:
        positions = {i: str(i) for i in range(1, len(inputs))}
    for i, role in positions.items():
        if i < len(inputs) and inputs[i] in floats:
            found.append((inputs[i], role))
    if node.op_type in ("Gemm", "MatMul") and len([r for _, r in found if r == "weight"]) == 2:
        return []  # a product of two constants is not a layer acting on the input
    return found


def _fan_in(node: onnx.NodeProto, weight: str, tensor: onnx.TensorProto) -> int:
    shape = list(tensor.dims)
    if not shape:
        return 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Conv", "ConvTranspose"):
        return max(1, int(np.prod(shape[1:])))
    first = list(node.input).index(weight) == 0
    if node.op_type == "Gemm":
        if first:  # A [M, K], transposed: [K, M]
            return int(shape[0] if attrs.get("transA", 0) else shape[-1])
        return int(shape[-1] if attrs.get("transB", 0) else shape[0])
    if node.op_type == "MatMul":
        return int(shape[-1] if first else (shape[-2] if len(shape) >= 2 else shape[0]))
    return 1


def parametrised_layers(model: onnx.ModelProto) -> list[Layer]:
    """The model's layers in graph order (the last is the top)."""
    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type in FLOATS}
    claimed: set[str] = set()
    layers: list[Layer] = []
    producer: dict[str, int] = {}  # output -> index in `layers` of a dense layer's node
    for index, node in enumerate(graph.node):
        if node.op_type in DENSE or node.op_type in NORMALISATIONS:
            parameters = [(name, role) for name, role in _parameter_inputs(node, floats) if name not in claimed]
            if not parameters:
                continue
            weight = next((name for name, role in parameters if role == "weight"), "")
            fan_in = _fan_in(node, weight, floats[weight]) if weight else 1
            claimed.update(name for name, _ in parameters)
            if node.op_type in DENSE:
                producer.update({out: len(layers) for out in node.output})
            layers.append(Layer(index, node.name or f"{node.op_type}_{index}", node.op_type, tuple(parameters),
                                fan_in))
        elif node.op_type == "Add" and len(node.input) == 2:
            a, b = node.input
            owner, bias = (producer.get(a), b) if a in producer else (producer.get(b), a)
            if owner is not None and bias in floats and bias not in claimed:
                layer = layers[owner]
                layers[owner] = Layer(layer.node, layer.name, layer.op, layer.parameters + ((bias, "bias"),),
                                      layer.fan_in)
                claimed.add(bias)
    return layers


def redraw(model: onnx.ModelProto, layer: Layer, init: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """New values for the layer's parameters (by initializer name), drawn from `rng` in the order of
    `layer.parameters`; their shapes and dtypes are the originals'."""
    tensors = {t.name: t for t in model.graph.initializer}
    drawn: dict[str, np.ndarray] = {}
    for name, role in layer.parameters:
        original = numpy_helper.to_array(tensors[name])
        if init == UNIFORM:
            if layer.op in NORMALISATIONS:
                value = np.full(original.shape, RESET[layer.op].get(int(role), 0.0))
            else:
                bound = 1.0 / np.sqrt(layer.fan_in)
                value = rng.uniform(-bound, bound, size=original.shape)
        else:
            values = original.astype(np.float64)
            value = rng.normal(values.mean(), values.std(), size=original.shape) if values.size else values
            if layer.op in NORMALISATIONS and (layer.op, int(role)) in VARIANCE:
                value = np.abs(value)
        drawn[name] = np.asarray(value, dtype=original.dtype)
    return drawn


def with_parameters(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `values` hold those values."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(numpy_helper.from_array(values[tensor.name], tensor.name))
    return copy


def randomisation_steps(layers: Sequence[Layer], count: int, order: str) -> list[list[int]]:
    """Which layers (indices into `layers`) each step re-draws: the top `count` layers, top first;
    cascading: step k the top k + 1 together; independent: step k the (k + 1)-th from the top alone."""
    top = list(range(len(layers) - 1, len(layers) - 1 - count, -1))
    if order == "cascading":
        return [top[:k + 1] for k in range(len(top))]
    return [[i] for i in top]


__all__ = ["NORMAL", "UNIFORM", "Layer", "parametrised_layers", "randomisation_steps", "redraw", "with_parameters"]
