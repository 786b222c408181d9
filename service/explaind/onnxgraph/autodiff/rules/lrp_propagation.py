"""LRP outside the linear layers (variant "lrp"), as Zennit's composites treat them.

- activations (Relu, ReLU6 as Clip, LeakyRelu, PRelu, Sigmoid, Tanh, Hard*, Elu, Selu, Celu,
  Gelu, Softplus, Softsign, Mish): pass, R_in = R (Zennit's `Pass`);
- inference batch norm left unmerged (one not right after a Conv or Gemm): pass, as Zennit;
- sums of several activations (residual Add, Sum, Sub): normalisation, each operand's share in
  proportion to its contribution, R_i = x_i * R / stab(y) (Zennit's `Norm` on its `Sum`);
- AveragePool and GlobalAveragePool: normalisation, R_in = x * A^T (R / stab(y)) (Zennit's `Norm`);
- everything else that moves or selects values keeps its gradient rule (the relevance is moved as
  the gradient would be): reshapes, Concat, Split, Slice, Pad, Transpose, MaxPool (the window's
  relevance to its argmax, winner takes all), and arithmetic with a constant operand (a bias Add,
  a scaling Mul), ReduceMean/ReduceSum: the gradient, as Zennit gives functional operations;
- an activation written out as a product x * g(x), g element-wise in x alone (SiLU, GELU with Erf,
  Mish: what the exporter writes for torch's modules): pass, all of it to x;
- a product or quotient of two activations (gating, attention), a MatMul of two activations and
  non-linear functions that are not activations (Exp, Log, Pow, Sqrt, Reciprocal, Erf, Softmax,
  LogSoftmax) have no relevance rule: the model refuses LRP (FAILED_PRECONDITION, operator and node).
"""

from __future__ import annotations

import dataclasses

from ..registry import RuleContext, register
from . import elementwise, pooling
from .lrp_linear import LRP, STABILIZER, stabilise

PASS_ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
                    "Gelu", "Softplus", "Softsign", "Mish", "ThresholdedRelu")
NO_RULE = ("Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Erf", "Softmax", "LogSoftmax")


@register(PASS_ACTIVATIONS, variant=LRP)
def lrp_pass(ctx: RuleContext) -> list:
    """R_in = R: activations pass relevance through (Zennit's Pass)."""
    return [ctx.g]


@register("PRelu", variant=LRP)
def lrp_pass_prelu(ctx: RuleContext) -> list:
    """R_in = R (the slope, input 1, carries none)."""
    return [ctx.g]


@register("Clip", variant=LRP, constant_inputs=())
def lrp_pass_clip(ctx: RuleContext) -> list:
    """R_in = R (ReLU6 and other clips are activations)."""
    return [ctx.g]


@register("BatchNormalization", variant=LRP, grad_inputs=(0,), outputs=(0,))
def lrp_pass_batch_norm(ctx: RuleContext) -> list:
    """An unmerged inference batch norm passes relevance (Zennit's BatchNorm: Pass)."""
    if int(ctx.attr("training_mode", 0)) or len([o for o in ctx.node.output if o]) > 1:
        ctx.fail("training-mode batch normalisation has no relevance rule")
    return [ctx.g]


def _to_operand(ctx: RuleContext, g: str, i: int) -> str:
    """A relevance shaped like the output, summed back to the shape of input i (broadcasting)."""
    return ctx.unbroadcast(g, ctx.info.dims(ctx.y()), ctx.x(i))


def _share(ctx: RuleContext, signs: list[float]) -> list:
    """R_i = sign_i * x_i * R / stab(y) for the needed operands, summed back over broadcasting.

    With one operand needed (the others constants: a bias) the relevance moves as the gradient."""
    needed = [i for i, n in enumerate(ctx.need) if n]
    if len(needed) < 2:
        return [_to_operand(ctx, ctx.g if signs[i] > 0 else ctx.e.op("Neg", [ctx.g]), i)
                if ctx.need[i] else None for i in range(len(ctx.need))]
    e = ctx.e
    s = e.op("Div", [ctx.g, stabilise(ctx, ctx.y(), float(ctx.params.get("stabilizer", STABILIZER)))])
    grads = []
    for i, needed_i in enumerate(ctx.need):
        if not needed_i:
            grads.append(None)
            continue
        part = e.op("Mul", [s, ctx.x(i)])
        if signs[i] < 0:
            part = e.op("Neg", [part])
        grads.append(_to_operand(ctx, part, i))
    return grads


@register("Add", variant=LRP, grad_inputs=(0, 1))
def lrp_add(ctx: RuleContext) -> list:
    """y = a + b: R_a = a R / stab(y), R_b = b R / stab(y) (residual connections)."""
    return _share(ctx, [1.0, 1.0])


@register("Sum", variant=LRP, grad_inputs=None)
def lrp_sum(ctx: RuleContext) -> list:
    """y = sum_i x_i: R_i = x_i R / stab(y)."""
    return _share(ctx, [1.0] * len(ctx.node.input))


@register("Sub", variant=LRP, grad_inputs=(0, 1))
def lrp_sub(ctx: RuleContext) -> list:
    """y = a - b: R_a = a R / stab(y), R_b = -b R / stab(y)."""
    return _share(ctx, [1.0, -1.0])


def _one_active(ctx: RuleContext) -> None:
    if sum(bool(n) for n in ctx.need) > 1:
        ctx.fail(f"no relevance rule for {ctx.node.op_type} of two activations (gating, attention)")


@register("Mul", variant=LRP, grad_inputs=(0, 1))
def lrp_mul(ctx: RuleContext) -> list:
    """A constant factor: the gradient (as Zennit). x * g(x) with g element-wise in x alone (an
    activation written out: SiLU x * sigmoid(x), GELU, Mish; params["signal"] names x's input):
    pass, all to x. Two activations otherwise (gating): no rule."""
    signal = ctx.params.get("signal")
    if signal is not None:
        return [ctx.g if i == signal else None for i in range(len(ctx.need))]
    _one_active(ctx)
    return elementwise.mul(ctx)


@register("Div", variant=LRP, grad_inputs=(0, 1))
def lrp_div(ctx: RuleContext) -> list:
    """A constant divisor: the gradient (as Zennit); two activations: no rule."""
    _one_active(ctx)
    return elementwise.div(ctx)


@register(NO_RULE, variant=LRP)
def lrp_no_rule(ctx: RuleContext) -> list:
    ctx.fail("no relevance rule (a non-linear function that is not an activation)")
    return []


def _normalised(ctx: RuleContext, adjoint) -> list:
    """R_in = x * A^T (R / stab(y)) for a pooling A (Zennit's Norm)."""
    e = ctx.e
    s = e.op("Div", [ctx.g, stabilise(ctx, ctx.y(), float(ctx.params.get("stabilizer", STABILIZER)))])
    spread = adjoint(dataclasses.replace(ctx, gy=[s]))[0]
    return [e.op("Mul", [ctx.x(), spread])]


@register("AveragePool", variant=LRP)
def lrp_average_pool(ctx: RuleContext) -> list:
    return _normalised(ctx, pooling.average_pool)


@register("GlobalAveragePool", variant=LRP)
def lrp_global_average_pool(ctx: RuleContext) -> list:
    return _normalised(ctx, pooling.global_average_pool)
