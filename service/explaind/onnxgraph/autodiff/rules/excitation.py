"""Excitation backprop (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop"), rule
variants "excitation" and "excitation_contrastive", with TorchRay's semantics.

A linear layer y = f(x, W) (Conv, Gemm, MatMul with a constant weight) passes back the winning
probabilities p' = x * f*(W+, p / (f(x, W+) + 1e-20)), W+ = max(W, 0), its bias ignored (f* the
layer's adjoint); average pooling (AveragePool, GlobalAveragePool) the same with its own positive
weights: p' = x * pool*(p / (pool(x) + 1e-20)); batch normalisation passes p through unchanged (so
the rules never see it folded into a convolution: simplify leaves it for these variants); the sum
of two activations (a residual Add) splits p in proportion, p'_i = x_i / y * p (TorchRay's
`eltwise_sum`; 0 where y = 0). Everything else (ReLU, max pooling, reshapes, concatenation) keeps
its gradient, as TorchRay leaves those functions unpatched.

Contrastive (TorchRay's `contrastive_excitation_backprop`): a second pass with the classifier's
weights negated is subtracted at a contrast layer between the classifier and the map's layer. Every
rule above is linear in p given the forward pass, so the difference of the two passes is one pass
whose classifier layer (the last Conv/Gemm/MatMul with a constant weight, TorchRay's
`_get_classifier_layer`; the first one the backward walk meets) passes back
p' = x * (f*(W+, p / f(x, W+)) - f*(W-, p / f(x, W-))), W- = max(-W, 0); the result does not depend
on which contrast layer is chosen.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper

from ..registry import RULES, RuleContext, register

VARIANT = "excitation"
CONTRASTIVE = "excitation_contrastive"
VARIANTS = (VARIANT, CONTRASTIVE)
TINY = 1e-20  # TorchRay's guard of the normaliser

_CLASSIFIER_SEEN = "_explaind_excitation_classifier_seen"  # set on the walk's Emitter


def _plain(ctx: RuleContext, g: str, node: onnx.NodeProto | None = None) -> list:
    """The plain gradient rule for the incoming gradient `g` (and optionally another forward node)."""
    spec = RULES[("plain", "", ctx.node.op_type)]
    return spec.fn(dataclasses.replace(ctx, node=node or ctx.node, gy=[g, *ctx.gy[1:]]))


def _weight_variant(ctx: RuleContext, index: int, weight: np.ndarray, hint: str) -> onnx.NodeProto:
    """A copy of the forward node with input `index` replaced by the constant `weight`, its bias
    dropped; the constant is made known to the walk's GraphInfo so rules can read its value."""
    name = ctx.e.const(weight.astype(ctx.constant(index).dtype), hint)
    ctx.info.constants[name] = weight
    ctx.info.types[name] = (ctx.dtype(ctx.x(index)), list(weight.shape))
    node = onnx.NodeProto()
    node.CopyFrom(ctx.node)
    inputs = list(node.input)
    inputs[index] = name
    if node.op_type in ("Conv", "Gemm"):
        inputs = inputs[:2]
    del node.input[:]
    node.input.extend(inputs)
    return node


def _forward(ctx: RuleContext, node: onnx.NodeProto) -> str:
    """Run `node` (a modified copy of the forward node) again: its output."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        attrs.pop("beta", None)
    return ctx.e.op(node.op_type, list(node.input), **attrs)


def _excite(ctx: RuleContext, index: int, weight: np.ndarray, hint: str) -> str:
    """f*(W', p / (f(x, W') + 1e-20)) for the non-negative weight W'."""
    node = _weight_variant(ctx, index, weight, hint)
    z = ctx.e.op("Add", [_forward(ctx, node), ctx.scalar(TINY)])
    return _plain(ctx, ctx.e.op("Div", [ctx.g, z]), node)[0]


def _is_classifier(ctx: RuleContext) -> bool:
    """The first weighted linear layer the backward walk meets (reverse topological order)."""
    if ctx.variant != CONTRASTIVE or getattr(ctx.e, _CLASSIFIER_SEEN, False):
        return False
    setattr(ctx.e, _CLASSIFIER_SEEN, True)
    return True


def _linear(ctx: RuleContext, weight_index: int) -> list:
    if weight_index < len(ctx.need) and ctx.need[weight_index]:
        ctx.fail("excitation backprop needs a constant weight (this one depends on the input)")
    w = ctx.constant(weight_index)
    if w is None:
        ctx.fail("excitation backprop needs the weight as an initializer or Constant")
    classifier = _is_classifier(ctx)
    p = _excite(ctx, weight_index, np.maximum(w, 0), "excitation_w_plus")
    if classifier:
        p = ctx.e.op("Sub", [p, _excite(ctx, weight_index, np.maximum(-w, 0), "excitation_w_minus")])
    result: list = [None] * len(ctx.need)
    result[1 - weight_index] = ctx.e.op("Mul", [ctx.x(1 - weight_index), p])
    return result


@register("Conv", variant=VARIANTS[0], grad_inputs=(0,))
@register("Conv", variant=VARIANTS[1], grad_inputs=(0,))
def conv(ctx: RuleContext) -> list:
    """p' = x * conv*(W+, p / (conv(x, W+) + 1e-20)) (contrastive classifier: minus the W- pass)."""
    return _linear(ctx, 1)


@register("Gemm", variant=VARIANTS[0], grad_inputs=(0,))
@register("Gemm", variant=VARIANTS[1], grad_inputs=(0,))
def gemm(ctx: RuleContext) -> list:
    """Y = alpha A B' (+ beta C ignored): p'_A = A * gemm*(B+, p / (alpha A B+' + 1e-20))."""
    return _linear(ctx, 1)


@register("MatMul", variant=VARIANTS[0], grad_inputs=(0,))
@register("MatMul", variant=VARIANTS[1], grad_inputs=(0,))
def matmul(ctx: RuleContext) -> list:
    """Y = A @ B, B constant: p'_A = A * ((p / (A @ B+ + 1e-20)) @ B+^T)."""
    return _linear(ctx, 1)


@register(("AveragePool", "GlobalAveragePool"), variant=VARIANTS[0])
@register(("AveragePool", "GlobalAveragePool"), variant=VARIANTS[1])
def average_pool(ctx: RuleContext) -> list:
    """p' = x * pool*(p / (pool(x) + 1e-20)) (the pooling's weights are positive: f(x, W+) = y)."""
    e = ctx.e
    normalised = e.op("Div", [ctx.g, e.op("Add", [ctx.y(), ctx.scalar(TINY)])])
    return [e.op("Mul", [ctx.x(), _plain(ctx, normalised)[0]])]


@register("BatchNormalization", variant=VARIANTS[0], grad_inputs=(0,), outputs=(0,))
@register("BatchNormalization", variant=VARIANTS[1], grad_inputs=(0,), outputs=(0,))
def batch_normalization(ctx: RuleContext) -> list:
    """p' = p (TorchRay passes excitations through batch normalisation unchanged)."""
    return [ctx.g]


@register("Add", variant=VARIANTS[0], grad_inputs=(0, 1))
@register("Add", variant=VARIANTS[1], grad_inputs=(0, 1))
def add(ctx: RuleContext) -> list:
    """Two activations: p'_i = x_i / y * p (0 where y = 0); with a constant (a bias): the gradient."""
    if not all(ctx.need[:2]):
        return _plain(ctx, ctx.g)
    e = ctx.e
    y = ctx.y()
    zero = ctx.scalar(0.0)
    safe = e.op("Where", [e.op("Equal", [y, zero]), ctx.scalar(1.0), y])
    share = e.op("Where", [e.op("Equal", [y, zero]), zero, e.op("Div", [ctx.g, safe])])
    return [ctx.unbroadcast(e.op("Mul", [share, ctx.x(i)]), ctx.info.dims(y), ctx.x(i)) for i in range(2)]
