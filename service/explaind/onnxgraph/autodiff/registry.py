"""The rule table: one backward function per (variant, domain, op_type), with a fallback to "plain".

A rule is a function ``rule(ctx) -> list[str | None]``: given the gradients flowing into the node's
outputs (``ctx.gy``), it emits nodes through ``ctx.e`` and returns, per input, the name of the
gradient tensor (None where no gradient is needed: ``ctx.need[i]`` is False).

Variants change a few rules and fall back to the plain ones for every other operator:
"guided" and "deconvnet" replace Relu (and Clip used as ReLU6); LRP rules can be added the same way
(register rules under a new variant name; it becomes a valid `rule` argument).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .emitter import Emitter, ShapeUnknown
from .errors import UnsupportedOperator
from .info import GraphInfo

VARIANTS = ("plain", "guided", "deconvnet")  # the built-in ones; register() may add more

# Operators whose outputs carry no gradient (integers, booleans, shapes, or piecewise-constant
# values): they stay in the graph as they are and stop the differentiated path.
NON_DIFFERENTIABLE = frozenset(
    {
        "Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike", "NonZero",
        "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
        "ArgMax", "ArgMin", "IsNaN", "IsInf", "Floor", "Ceil", "Round", "Sign",
        "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial",
    }
)


@dataclass(frozen=True)
class RuleSpec:
    fn: Callable[["RuleContext"], list[str | None]]
    grad_inputs: tuple[int, ...] | None  # inputs the rule differentiates; None = all
    constant_inputs: tuple[int, ...]     # inputs that never carry gradient (shapes, axes, indices)
    outputs: tuple[int, ...] | None      # outputs that carry gradient; None = all

    def carries(self, index: int) -> bool:
        """Whether input `index` can carry gradient at all (implemented or not)."""
        return index not in self.constant_inputs

    def implements(self, index: int) -> bool:
        return self.carries(index) and (self.grad_inputs is None or index in self.grad_inputs)

    def output_carries(self, index: int) -> bool:
        return self.outputs is None or index in self.outputs


RULES: dict[tuple[str, str, str], RuleSpec] = {}


def register(
    op_types: str | tuple[str, ...],
    *,
    variant: str = "plain",
    domain: str = "",
    grad_inputs: tuple[int, ...] | None = (0,),
    constant_inputs: tuple[int, ...] = (),
    outputs: tuple[int, ...] | None = (0,),
) -> Callable:
    """Decorator: register `fn` as the backward rule of `op_types` for `variant`.

    Inputs not in `grad_inputs` and not in `constant_inputs` are differentiable in principle but
    unimplemented (a weight, a bias): a path through one of them raises UnsupportedOperator.
    """
    names = (op_types,) if isinstance(op_types, str) else op_types

    def decorate(fn: Callable) -> Callable:
        for op_type in names:
            RULES[(variant, domain, op_type)] = RuleSpec(fn, grad_inputs, tuple(constant_inputs), outputs)
        return fn

    return decorate


@dataclass(frozen=True)
class NodeRule:
    """The rule variant one node uses, with that rule's parameters (LRP's epsilon, gamma, bounds...)."""

    variant: str
    params: Mapping[str, Any] = field(default_factory=dict)


# Chooses rules per node: called with the simplified model and its node names (as errors show them),
# returns a NodeRule per node name; nodes left out use differentiate's `rule`.
NodeRuleChooser = Callable[[onnx.ModelProto, list[str]], Mapping[str, NodeRule]]


def known_variants() -> set[str]:
    return {*VARIANTS, *(variant for variant, _, _ in RULES)}


def lookup(variant: str, node: onnx.NodeProto) -> RuleSpec | None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    key = (domain, node.op_type)
    return RULES.get((variant, *key)) or RULES.get(("plain", *key))


def is_non_differentiable(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in NON_DIFFERENTIABLE


@dataclass
class RuleContext:
    """What a rule sees: the forward node, the incoming gradients, and the means to emit nodes."""

    node: onnx.NodeProto
    node_name: str
    e: Emitter
    info: GraphInfo
    variant: str
    gy: list[str | None]
    need: list[bool]
    default_dtype: int = onnx.TensorProto.FLOAT  # the output's type, for tensors inference missed
    params: Mapping[str, Any] = field(default_factory=dict)  # the node's NodeRule parameters

    # The forward node ---------------------------------------------------------------------------

    @property
    def opset(self) -> int:
        return self.e.opset

    def x(self, i: int = 0) -> str:
        """Name of input i ('' when absent or omitted)."""
        return self.node.input[i] if i < len(self.node.input) else ""

    def y(self, k: int = 0) -> str:
        return self.node.output[k] if k < len(self.node.output) else ""

    @property
    def g(self) -> str:
        """The gradient flowing into output 0 (rules of single-output operators use this)."""
        g = self.gy[0]
        assert g is not None
        return g

    def attr(self, name: str, default: object = None) -> object:
        for a in self.node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def constant(self, i: int) -> np.ndarray | None:
        """The value of input i when it is an initializer or a Constant's output."""
        return self.info.constant(self.x(i))

    # Types and shapes ---------------------------------------------------------------------------

    def dtype(self, name: str | None = None) -> int:
        """The element type of a tensor (default: input 0); gradients share their tensor's type."""
        return self.info.elem_type(name or self.x(0)) or self.default_dtype

    def scalar(self, value: float, like: str | None = None) -> str:
        return self.e.scalar(value, self.dtype(like))

    def dims(self, name: str) -> list:
        dims = self.info.dims(name)
        if dims is None:
            self.fail(f"the rank of {name!r} is unknown")
        return dims  # type: ignore[return-value]

    def rank(self, name: str) -> int:
        return len(self.dims(name))

    def axis(self, axis: int, rank: int) -> int:
        return axis + rank if axis < 0 else axis

    def fail(self, reason: str) -> None:
        raise UnsupportedOperator(self.node.op_type, self.node_name, self.node.domain, reason)

    def unbroadcast(self, g: str, g_dims: list | None, target: str) -> str:
        try:
            return self.e.unbroadcast(g, g_dims, target)
        except ShapeUnknown as err:
            self.fail(str(err))
            raise

    def zeros_like(self, x: str) -> str:
        return self.e.zeros_like(x, self.dtype(x))

    def add_forward_output(self) -> str:
        """Append an output to the forward node (MaxPool's Indices); returns its name."""
        name = self.e.fresh(f"{self.node.op_type.lower()}_out")
        self.node.output.append(name)
        return name
