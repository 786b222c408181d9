"""LRP composites: which rule each linear layer of a graph uses (Zennit's names and semantics).

A composite picks a rule per linear layer (Conv is a "convolution", Gemm and MatMul with a constant
weight are "dense"; both are "linear") from its type and position; every other operator gets the
variant "lrp" rules of rules/lrp_propagation.py. The first layer is the first node, in graph order,
of the first-layer type among those the input reaches (Zennit: the first such module registered).

| composite                 | first layer        | convolutions  | dense   |
|---------------------------|--------------------|---------------|---------|
| epsilon_gamma_box         | zbox (first conv)  | gamma         | epsilon |
| epsilon_plus              | -                  | zplus         | epsilon |
| epsilon_alpha2_beta1      | -                  | alpha2_beta1  | epsilon |
| epsilon_plus_flat         | flat (first linear)| zplus         | epsilon |
| epsilon_alpha2_beta1_flat | flat (first linear)| alpha2_beta1  | epsilon |
| deep_taylor               | zbox (first linear; wsquare without bounds) | zplus | zplus |

`deep_taylor` is deep Taylor decomposition (Montavon et al. 2017): its z+ rule in the hidden layers
and the z^B (bounded input) or w^2 (unbounded) rule at the input are those LRP rules, so it is
this composite. Per-layer rules (by node name or output tensor name) override the composite.
Batch norm is merged into the Conv or Gemm before it first (simplify.py), as Zennit's canonizers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from .core import differentiate, unsupported_operators
from .registry import NodeRule, NodeRuleChooser
from .rules.lrp_linear import LINEAR_RULES, LRP, STABILIZER

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat", "deep_taylor")
DEFAULT_COMPOSITE = "epsilon_plus_flat"
DEFAULT_EPSILON = 1e-6
DEFAULT_GAMMA = 0.25

# composite -> (first-layer type, first-layer rule, convolution rule, dense rule)
_TABLE: dict[str, tuple[str, str, str, str]] = {
    "epsilon_gamma_box": ("conv", "zbox", "gamma", "epsilon"),
    "epsilon_plus": ("", "", "zplus", "epsilon"),
    "epsilon_alpha2_beta1": ("", "", "alpha2_beta1", "epsilon"),
    "epsilon_plus_flat": ("linear", "flat", "zplus", "epsilon"),
    "epsilon_alpha2_beta1_flat": ("linear", "flat", "alpha2_beta1", "epsilon"),
    "deep_taylor": ("linear", "zbox", "zplus", "zplus"),
}


@dataclass(frozen=True)
class Composite:
    """A composite with its parameters. `epsilon` and `gamma` are floats or names of [rows] tensors
    of the graph; `low`/`high` the input bounds (nested lists broadcasting to one example, batch
    dimension first), None when unknown; `layer_rules` (layer, rule) pairs overriding the composite."""

    name: str = DEFAULT_COMPOSITE
    epsilon: float | str = DEFAULT_EPSILON
    gamma: float | str = DEFAULT_GAMMA
    low: Any = None
    high: Any = None
    layer_rules: tuple[tuple[str, str], ...] = ()
    stabilizer: float = STABILIZER

    def __post_init__(self) -> None:
        if self.name not in _TABLE:
            raise ValueError(f"composite: expected one of {', '.join(COMPOSITES)}, got {self.name!r}")
        for layer, rule in self.layer_rules:
            if rule not in LINEAR_RULES:
                raise ValueError(f"layer_rules: rule for {layer!r}: expected one of {', '.join(LINEAR_RULES)}, "
                                 f"got {rule!r}")

    def rule_params(self, rule: str) -> dict[str, Any]:
        params: dict[str, Any] = {"rule": rule, "stabilizer": self.stabilizer}
        if rule == "epsilon":
            params["epsilon"] = self.epsilon
        elif rule == "gamma":
            params["gamma"] = self.gamma
        elif rule == "zbox":
            params["low"], params["high"] = self.low, self.high
        return params


def linear_kind(node: onnx.NodeProto, constants: set[str]) -> str:
    """"conv", "dense" or "" (not a linear layer LRP rules apply to)."""
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return ""
    if node.op_type == "Conv":
        return "conv"
    if node.op_type in ("Gemm", "MatMul") and node.input[1] in constants:
        return "dense"
    return ""


def _constants(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {t.name for t in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return names


def linear_layers(model: onnx.ModelProto, source: str) -> list[tuple[int, onnx.NodeProto, str]]:
    """(index, node, kind) of the linear layers `source` reaches, in graph order."""
    constants = _constants(model)
    reached = {source}
    found = []
    for index, node in enumerate(model.graph.node):
        if not any(i in reached for i in node.input if i):
            continue
        reached.update(o for o in node.output if o)
        kind = linear_kind(node, constants)
        if kind and node.input[0] in reached:
            found.append((index, node, kind))
    return found


def assign(model: onnx.ModelProto, source: str, composite: Composite) -> dict[int, str]:
    """node index -> rule name, for every linear layer `source` reaches."""
    first_type, first_rule, conv_rule, dense_rule = _TABLE[composite.name]
    layers = linear_layers(model, source)
    if composite.name == "deep_taylor" and (composite.low is None or composite.high is None):
        first_rule = "wsquare"
    rules = {index: conv_rule if kind == "conv" else dense_rule for index, _, kind in layers}
    if first_type:
        first = next((index for index, _, kind in layers if first_type == "linear" or kind == first_type), None)
        if first is not None:
            rules[first] = first_rule
    overrides = dict(composite.layer_rules)
    for index, node, _ in layers:
        for key in (node.name, node.output[0]):
            if key and key in overrides:
                rules[index] = overrides[key]
    return rules


def matmul_bias(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray | None:
    """The bias of a MatMul whose output only an Add with a constant vector reads (a Linear layer
    exported as MatMul + Add), else None."""
    if node.op_type != "MatMul":
        return None
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type != "Add" or any(o.name == node.output[0] for o in model.graph.output):
        return None
    other = [i for i in readers[0].input if i != node.output[0]]
    inits = {t.name: t for t in model.graph.initializer}
    if len(other) != 1 or other[0] not in inits:
        return None
    bias = numpy_helper.to_array(inits[other[0]])
    weight = inits.get(node.input[1])
    if weight is None or bias.size != weight.dims[-1] or any(d != 1 for d in bias.shape[:-1]) or bias.ndim < 1:
        return None
    return bias.reshape(-1)


# Element-wise operators an activation written out may apply to its input (unary, or with a constant).
_ELEMENTWISE = frozenset({"Sigmoid", "Tanh", "Erf", "Softplus", "Relu", "HardSigmoid", "Exp", "Neg", "Abs", "Clip",
                          "Add", "Sub", "Mul", "Div", "Pow", "Identity", "Cast"})


def _function_of(producers: dict[str, onnx.NodeProto], constants: set[str], tensor: str, x: str, depth: int = 8) -> bool:
    """Whether `tensor` is an element-wise function of `x` alone (constants aside)."""
    if tensor == x:
        return True
    node = producers.get(tensor)
    if depth == 0 or node is None or node.op_type not in _ELEMENTWISE or node.domain not in ("", "ai.onnx"):
        return False
    data = [i for i in node.input if i and i not in constants]
    return bool(data) and all(_function_of(producers, constants, i, x, depth - 1) for i in data)


def written_out_activations(model: onnx.ModelProto) -> dict[int, int]:
    """node index -> the input holding x, for each Mul x * g(x) with g element-wise in x (SiLU, GELU, Mish),
    and for a constant Mul right after one (GELU's x * (1 + erf(x / sqrt 2)) * 0.5): the activation's
    relevance passes to x whole."""
    nodes = list(model.graph.node)
    producers = {o: n for n in nodes for o in n.output}
    constants = _constants(model)
    found: dict[int, int] = {}
    for index, node in enumerate(nodes):
        if node.op_type != "Mul" or len(node.input) != 2 or any(i in constants for i in node.input):
            continue
        for signal in (0, 1):
            x, gate = node.input[signal], node.input[1 - signal]
            if gate in producers and _function_of(producers, constants, gate, x):
                found[index] = signal
                break
    products = {nodes[i].output[0] for i in found}
    readers: dict[str, int] = {}
    for node in nodes:
        for i in node.input:
            readers[i] = readers.get(i, 0) + 1
    for index, node in enumerate(nodes):
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
            continue
        data = 0 if node.input[1] in constants else 1 if node.op_type == "Mul" and node.input[0] in constants else None
        if data is not None and node.input[data] in products and readers.get(node.input[data]) == 1:
            found[index] = data
    return found


def chooser(composite: Composite, source: str) -> NodeRuleChooser:
    """The NodeRuleChooser for `differentiate(..., rule="lrp", node_rules=...)`."""

    def choose(model: onnx.ModelProto, names: list[str]) -> dict[str, NodeRule]:
        chosen = {}
        for index, rule in assign(model, source, composite).items():
            params = composite.rule_params(rule)
            bias = matmul_bias(model, model.graph.node[index])
            if bias is not None:
                params["bias"] = bias
            chosen[names[index]] = NodeRule(LRP, params)
        for index, signal in written_out_activations(model).items():
            chosen[names[index]] = NodeRule(LRP, {"signal": signal})
        return chosen

    return choose


def unknown_layers(model: onnx.ModelProto, source: str, layers: list[str]) -> list[str]:
    """The names in `layers` that are neither the node name nor the output of a linear layer."""
    known = set()
    for _, node, _ in linear_layers(model, source):
        known.update(n for n in (node.name, node.output[0]) if n)
    return [name for name in layers if name not in known]


def canonise(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in the form the rules read: parameters reached through Identity or Transpose
    nodes (torch's exporter shares equal initializers through an Identity, and without constant
    folding writes a Linear on a 3-D input as MatMul(x, Transpose(W)) + b) become initializers of
    their own. (Batch norm is merged into the Conv or Gemm before it by simplify, for every variant.)"""
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        folded = None
        if node.domain in ("", "ai.onnx") and node.input and node.input[0] in inits and node.output[0] not in outputs:
            value = numpy_helper.to_array(inits[node.input[0]])
            if node.op_type == "Identity":
                folded = value
            elif node.op_type == "Transpose" and len(node.input) == 1:
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                folded = np.transpose(value, perm)
        if folded is not None:
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(folded), node.output[0]))
            inits[node.output[0]] = graph.initializer[-1]
            continue
        kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    return model


def relevance_graph(model: onnx.ModelProto, output: str, source: str, composite: Composite, *,
                    seed_name: str = "explaind::seed", grad_prefix: str = "explaind::grad::") -> onnx.ModelProto:
    """`model` plus the seed input and the output grad_prefix + source: the LRP relevance of `source`
    for the relevance `seed` at `output` (the rules are linear in it: seed the target's score)."""
    return differentiate(canonise(model), output, [source], rule=LRP, seed_name=seed_name, grad_prefix=grad_prefix,
                         node_rules=chooser(composite, source))


def operators_without_rule(model: onnx.ModelProto, output: str, source: str,
                           composite: Composite | None = None) -> list[tuple[str, str]]:
    """(op_type, node name) of the operators on the path that LRP has no rule for."""
    return unsupported_operators(canonise(model), output, [source], rule=LRP,
                                 node_rules=chooser(composite or Composite(), source))
