"""Element-wise arithmetic with numpy broadcasting, and unary functions.

Binary rules compute the gradient at the broadcast shape of the output and sum it back to each
operand's shape (Emitter.unbroadcast).
"""

from __future__ import annotations

import math

from ..registry import RuleContext, register


def _to_operand(ctx: RuleContext, g: str, i: int) -> str:
    """A gradient shaped like the output, summed back to the shape of input i."""
    return ctx.unbroadcast(g, ctx.info.dims(ctx.y()), ctx.x(i))


def _neg(ctx: RuleContext, g: str) -> str:
    return ctx.e.op("Neg", [g])


@register(("Identity", "Dropout"), constant_inputs=(1, 2))
def identity(ctx: RuleContext) -> list:
    """y = x (Dropout at inference: the graph is run for explanations, never for training)."""
    return [ctx.g]


@register("Cast")
def cast(ctx: RuleContext) -> list:
    """y = cast(x) between float types: dx = cast(g) back to x's type."""
    return [ctx.e.op("Cast", [ctx.g], to=ctx.dtype(ctx.x(0)))]


@register("Add", grad_inputs=(0, 1))
def add(ctx: RuleContext) -> list:
    """y = a + b: da = sum_broadcast(g), db = sum_broadcast(g)."""
    return [_to_operand(ctx, ctx.g, i) if ctx.need[i] else None for i in range(2)]


@register("Sub", grad_inputs=(0, 1))
def sub(ctx: RuleContext) -> list:
    """y = a - b: da = sum_broadcast(g), db = -sum_broadcast(g)."""
    da = _to_operand(ctx, ctx.g, 0) if ctx.need[0] else None
    db = _neg(ctx, _to_operand(ctx, ctx.g, 1)) if ctx.need[1] else None
    return [da, db]


@register("Mul", grad_inputs=(0, 1))
def mul(ctx: RuleContext) -> list:
    """y = a * b: da = sum_broadcast(g * b), db = sum_broadcast(g * a)."""
    a, b = ctx.x(0), ctx.x(1)
    da = _to_operand(ctx, ctx.e.op("Mul", [ctx.g, b]), 0) if ctx.need[0] else None
    db = _to_operand(ctx, ctx.e.op("Mul", [ctx.g, a]), 1) if ctx.need[1] else None
    return [da, db]


@register("Div", grad_inputs=(0, 1))
def div(ctx: RuleContext) -> list:
    """y = a / b: da = sum_broadcast(g / b), db = -sum_broadcast(g * y / b)."""
    e = ctx.e
    b = ctx.x(1)
    g_over_b = e.op("Div", [ctx.g, b])
    da = _to_operand(ctx, g_over_b, 0) if ctx.need[0] else None
    db = _neg(ctx, _to_operand(ctx, e.op("Mul", [g_over_b, ctx.y()]), 1)) if ctx.need[1] else None
    return [da, db]


@register("Sum", grad_inputs=None)
def sum_(ctx: RuleContext) -> list:
    """y = x_1 + ... + x_n (broadcasting): dx_i = sum_broadcast(g)."""
    return [_to_operand(ctx, ctx.g, i) if needed else None for i, needed in enumerate(ctx.need)]


@register("Expand", constant_inputs=(1,))
def expand(ctx: RuleContext) -> list:
    """y = broadcast(x, shape): dx = sum_broadcast(g)."""
    return [_to_operand(ctx, ctx.g, 0)]


@register("Neg")
def neg(ctx: RuleContext) -> list:
    """y = -x: dx = -g."""
    return [_neg(ctx, ctx.g)]


@register("Exp")
def exp(ctx: RuleContext) -> list:
    """y = exp(x): dx = g * y."""
    return [ctx.e.op("Mul", [ctx.g, ctx.y()])]


@register("Log")
def log(ctx: RuleContext) -> list:
    """y = log(x): dx = g / x."""
    return [ctx.e.op("Div", [ctx.g, ctx.x()])]


@register("Sqrt")
def sqrt(ctx: RuleContext) -> list:
    """y = sqrt(x): dx = g * 0.5 / y."""
    return [ctx.e.op("Div", [ctx.e.op("Mul", [ctx.g, ctx.scalar(0.5)]), ctx.y()])]


@register("Reciprocal")
def reciprocal(ctx: RuleContext) -> list:
    """y = 1 / x: dx = -g * y^2."""
    e = ctx.e
    return [_neg(ctx, e.op("Mul", [ctx.g, e.op("Mul", [ctx.y(), ctx.y()])]))]


@register("Pow", grad_inputs=(0, 1))
def pow_(ctx: RuleContext) -> list:
    """y = a^b: da = sum_broadcast(g * b * a^(b-1)), db = sum_broadcast(g * y * log(a))."""
    e = ctx.e
    a, b = ctx.x(0), ctx.x(1)
    da = db = None
    if ctx.need[0]:
        bf = b if ctx.dtype(b) == ctx.dtype(a) else e.op("Cast", [b], to=ctx.dtype(a))
        power = e.op("Pow", [a, e.op("Sub", [bf, ctx.scalar(1.0, a)])])
        da = _to_operand(ctx, e.op("Mul", [ctx.g, e.op("Mul", [bf, power])]), 0)
    if ctx.need[1]:
        db = _to_operand(ctx, e.op("Mul", [ctx.g, e.op("Mul", [ctx.y(), e.op("Log", [a])])]), 1)
    return [da, db]


@register("Erf")
def erf(ctx: RuleContext) -> list:
    """y = erf(x): dx = g * 2/sqrt(pi) * exp(-x^2)."""
    e = ctx.e
    x = ctx.x()
    density = e.op("Exp", [e.op("Neg", [e.op("Mul", [x, x])])])
    return [e.op("Mul", [ctx.g, e.op("Mul", [density, ctx.scalar(2.0 / math.sqrt(math.pi))])])]
