"""ReduceSum and ReduceMean: the gradient is broadcast back over the reduced axes.

The axes are an attribute before opset 13 (ReduceSum) / 18 (ReduceMean) and an optional input
after; no axes means all of them, unless noop_with_empty_axes makes the operator an identity.
"""

from __future__ import annotations

from ..registry import RuleContext, register


def _spread(ctx: RuleContext, switch: int) -> str:
    """g broadcast back to x's shape, re-inserting the reduced axes when keepdims = 0."""
    e = ctx.e
    x = ctx.x()
    keepdims = int(ctx.attr("keepdims", 1))
    if ctx.opset >= switch:
        axes_name = ctx.x(1)
        constant = ctx.constant(1)
        axes: list[int] | str | None
        if not axes_name:
            axes = None
        elif constant is not None:
            axes = [int(a) for a in constant.reshape(-1)] or None
        else:
            axes = axes_name  # computed at run time (Unsqueeze takes it as an input too)
        if axes is None and int(ctx.attr("noop_with_empty_axes", 0)):
            return ctx.g
    else:
        axes = [int(a) for a in (ctx.attr("axes") or [])] or None
    g = ctx.g
    if not keepdims and axes is not None:
        g = e.unsqueeze(g, axes if isinstance(axes, str) else [ctx.axis(a, ctx.rank(x)) for a in axes])
    return e.op("Expand", [g, e.shape(x)])


@register("ReduceSum", constant_inputs=(1,))
def reduce_sum(ctx: RuleContext) -> list:
    """y = sum over axes of x: dx = broadcast(g)."""
    return [_spread(ctx, 13)]


@register("ReduceMean", constant_inputs=(1,))
def reduce_mean(ctx: RuleContext) -> list:
    """y = mean over axes of x: dx = broadcast(g) / (|x| / |y|)."""
    e = ctx.e
    x = ctx.x()
    spread = _spread(ctx, 18)
    if spread == ctx.g:
        return [spread]
    count = e.op("Cast", [e.op("Div", [e.op("Size", [x]), e.op("Size", [ctx.y()])])], to=ctx.dtype(x))
    return [e.op("Div", [spread, count])]
